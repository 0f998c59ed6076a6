"""The one inference path of medlora. Training validation, routing, evaluation and serving all call these
functions: they batch requests of similar length, generate with the KV cache, run under the one precision
policy (tasks/finetune/precision.py), let an engine mix adapters per row, and keep results in a cache keyed
by everything that decides them, so that equal work is done once (the base model's summaries in routing
and again in evaluation, a candidate evaluated again on the same data, a champion beside a candidate).

An `Engine` is anything that answers requests: a causal LM (with or without adapters), its tokenizer, its
precision, and per list of requests a `Plan`: the context that configures each batch (a router sets each
row's mix of experts) and the identity of the weights that answer each request (the cache key's part).
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm import tqdm
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from tasks.finetune.examples import ANSWERS, Request, TokenizedExample, answer_token_ids, prompt_ids
from tasks.finetune.precision import autocast, resolve_precision
from tasks.finetune.train import collate, target_logits, target_losses

BatchContext = Callable[[list[int]], AbstractContextManager]
CACHE_FILE = Path("data/cache/inference.sqlite")


@dataclass
class Plan:
    """How an engine answers a list of requests: `context(indices)` is entered around each batch with the
    indices of its requests; `identities[i]` names the weights that answer request i (None: not cached)."""

    context: BatchContext | None = None
    identities: list[str] | None = None


class Engine(Protocol):
    model: torch.nn.Module
    tokenizer: object
    precision: str

    def plan(self, requests: Sequence[Request]) -> Plan:
        """Called once with every request to be answered (a router routes them here)."""


@dataclass
class AdapterEngine:
    """A base model, or a base model with one PEFT adapter; `identity` names its weights (for the cache)."""

    model: torch.nn.Module
    tokenizer: object
    identity: str | None = None
    precision: str = "auto"

    def plan(self, requests: Sequence[Request]) -> Plan:
        return Plan(None, [self.identity] * len(requests) if self.identity else None)


@dataclass
class PlannedEngine:
    """An engine whose plan is already made for the requests it will be given."""

    model: torch.nn.Module
    tokenizer: object
    fixed: Plan = field(default_factory=Plan)
    precision: str = "auto"

    def plan(self, requests: Sequence[Request]) -> Plan:
        return self.fixed


def weights_fingerprint(model: torch.nn.Module) -> str:
    """What a model's own weights are (LoRA layers left out), from every parameter's sum and sum of squares:
    cheap (a pass over the weights) and different for any retrained or re-converted model."""
    cached = getattr(model, "_medlora_fingerprint", None)
    if cached:
        return cached
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                continue
            # NumPy's pairwise sum, not torch's: torch splits a reduction over its threads, so the last bits (and the
            # fingerprint) would depend on the thread count, and a serving machine would refuse the bundle.
            values = parameter.detach().double().reshape(-1).cpu().numpy()
            # PEFT renames what it wraps ("base_model.model.<name>", "q_proj.base_layer.weight"): the same weights.
            name = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
            digest.update(f"{name}{tuple(parameter.shape)}"
                          f"{float(values.sum()):.17g}{float((values * values).sum()):.17g}".encode())
    fingerprint = digest.hexdigest()[:16]
    model._medlora_fingerprint = fingerprint
    return fingerprint


def file_fingerprint(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def mixture_identity(base: str, parts: Sequence[tuple[str, float]]) -> str:
    """The weights that answer a request: the base model plus each adapter (by fingerprint) at its weight.
    An adapter alone is the mix with weight 1; the base model alone has no parts."""
    mix = sorted((fingerprint, round(float(weight), 6)) for fingerprint, weight in parts if weight != 0)
    return base + "|" + ",".join(f"{fingerprint}:{weight:g}" for fingerprint, weight in mix)


class InferenceCache:
    """Inference results (JSON) in a SQLite file, keyed by what decides them: the kind of result, the
    weights that answer, the precision, the budget and the tokens in."""

    FILE = CACHE_FILE

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._connection = sqlite3.connect(self.path)
        self._connection.execute("CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, value NOT NULL)")
        self.hits = self.misses = 0

    @classmethod
    def for_project(cls, root: Path):
        return cls(Path(root) / cls.FILE)

    @staticmethod
    def encode(value: dict):
        return json.dumps(value)

    @staticmethod
    def decode(stored) -> dict:
        return json.loads(stored)

    def stored_bytes(self) -> int:
        return int(self._connection.execute("SELECT COALESCE(SUM(LENGTH(value)), 0) FROM results").fetchone()[0])

    @staticmethod
    def key(*parts) -> str:
        return hashlib.sha256(json.dumps(parts, separators=(",", ":")).encode()).hexdigest()

    def get_many(self, keys: Sequence[str]) -> dict[str, dict]:
        found: dict[str, dict] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            rows = self._connection.execute(
                f"SELECT key, value FROM results WHERE key IN ({','.join('?' * len(chunk))})", chunk).fetchall()
            found |= {k: self.decode(v) for k, v in rows}
        self.hits += sum(k in found for k in keys)
        self.misses += sum(k not in found for k in keys)
        return found

    def put_many(self, items: dict[str, dict]) -> None:
        with self._connection:
            self._connection.executemany("INSERT OR REPLACE INTO results VALUES (?, ?)",
                                         [(k, self.encode(v)) for k, v in items.items()])


def _batches(items: Sequence, batch_size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), batch_size):
        yield items[start : start + batch_size]


def _sorted_by_length(sequences: Sequence[Sequence[int]], rows: Sequence[int] | None = None) -> list[int]:
    """Rows (all by default) in order of length, so that sequences of similar length share a batch."""
    return sorted(range(len(sequences)) if rows is None else rows, key=lambda i: len(sequences[i]))


def padded(sequences: list[list[int]], pad_id: int, device: torch.device, side: str = "left") -> dict[str, torch.Tensor]:
    """input_ids and attention_mask, padded on the left (generation: every prompt ends in the last column)
    or on the right (a forward pass whose positions must start at 0)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        span = slice(width - len(sequence), width) if side == "left" else slice(0, len(sequence))
        ids[row, span] = torch.tensor(sequence)
        mask[row, span] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def _precision(engine: Engine) -> str:
    return resolve_precision(engine.precision, next(engine.model.parameters()).device)


@contextmanager
def _running(engine: Engine):
    """The model in eval mode under the engine's precision; yields (device, precision)."""
    model = engine.model
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    precision = _precision(engine)
    try:
        with torch.no_grad(), autocast(device, precision):
            yield device, precision
    finally:
        model.train(was_training)


def _cached(cache: InferenceCache | None, plan: Plan, keys: Callable[[int, str], str], count: int,
            compute: Callable[[list[int]], dict[int, dict]]) -> list[dict]:
    """Each request's result: from the cache where its key is there, else computed (for the missing rows
    at once) and stored."""
    if cache is None or plan.identities is None:
        found = compute(list(range(count)))
        return [found[i] for i in range(count)]
    request_keys = [keys(i, plan.identities[i]) for i in range(count)]
    stored = cache.get_many(request_keys)
    missing = [i for i in range(count) if request_keys[i] not in stored]
    if missing:
        computed = compute(missing)
        cache.put_many({request_keys[i]: computed[i] for i in missing})
        stored |= {request_keys[i]: computed[i] for i in missing}
    return [stored[k] for k in request_keys]


@dataclass
class AnswerScore:
    probabilities: dict[str, float]   # over yes / no / maybe, renormalised
    entropy: float                    # of the whole next-token distribution where the decision is read
    energy: float                     # -logsumexp of those logits

    @property
    def answer(self) -> str:
        return max(self.probabilities, key=self.probabilities.get)

    @property
    def margin(self) -> float:
        """The top answer's probability minus the runner-up's: small when the model hesitates between two."""
        top, second = sorted(self.probabilities.values(), reverse=True)[:2]
        return top - second

    @property
    def answer_entropy(self) -> float:
        return -sum(p * math.log(p) for p in self.probabilities.values() if p > 0)


@dataclass
class GeneratedText:
    text: str
    token_entropy: float   # mean entropy (nats) of the next-token distributions that produced the text
    energy: float          # mean of -logsumexp(logits) over those steps: higher is less familiar input
    seconds: float         # this request's share of its batch's wall time (when it was computed)
    decision: AnswerScore  # yes / no / maybe read from the first step (what a question's answer is)

    def __post_init__(self) -> None:
        if isinstance(self.decision, dict):  # as the cache keeps it
            self.decision = AnswerScore(**self.decision)


def _decisions(logits: torch.Tensor, candidates: dict[str, list[int]]) -> list[dict]:
    """Per row of next-token logits (rows, vocab): P(yes / no / maybe) renormalised over the three, and the
    entropy and energy of the whole distribution."""
    entropy, energy = _step_signals(logits)
    probabilities = logits.float().softmax(-1)
    decisions = []
    for row in range(len(logits)):
        mass = {a: probabilities[row, candidates[a]].sum().item() for a in ANSWERS}
        total = sum(mass.values()) or 1.0
        decisions.append({"probabilities": {a: m / total for a, m in mass.items()}, "entropy": float(entropy[row]),
                          "energy": float(energy[row])})
    return decisions


def _step_signals(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropy and energy of each row of next-token logits (..., vocab)."""
    logits = logits.float()
    log_probabilities = logits.log_softmax(-1)
    entropy = -(log_probabilities.exp() * log_probabilities).sum(-1)
    return entropy, -torch.logsumexp(logits, -1)


class RowSampling(LogitsProcessor):
    """Per row of a batch: greedy (temperature 0) or sampling at its own temperature and top-p, so that
    requests with different settings share one generation pass."""

    def __init__(self, temperatures: Sequence[float], top_ps: Sequence[float]):
        self.temperatures = torch.tensor(temperatures, dtype=torch.float)
        self.top_ps = torch.tensor(top_ps, dtype=torch.float)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        temperatures, top_ps = self.temperatures.to(scores.device), self.top_ps.to(scores.device)
        scaled = scores.float() / temperatures.clamp_min(1e-5)[:, None]
        ordered, order = scaled.sort(dim=-1)
        tail = ordered.softmax(-1).cumsum(-1) <= (1 - top_ps)[:, None]
        tail[:, -1] = False  # the most probable token always stays
        scaled = scaled.masked_fill(tail.scatter(1, order, tail), float("-inf"))
        greedy = torch.full_like(scaled, float("-inf")).scatter(1, scores.argmax(-1, keepdim=True), 0.0)
        return torch.where((temperatures == 0)[:, None], greedy, scaled)


class RowEndSuppressed(LogitsProcessor):
    """Rows marked `ignore` cannot end before their budget (vLLM's `ignore_eos`: benchmarks of equal work)."""

    def __init__(self, ignore: Sequence[bool], eos_token_id: int):
        self.ignore, self.eos_token_id = torch.tensor(ignore, dtype=torch.bool), eos_token_id

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.clone()
        scores[self.ignore.to(scores.device), self.eos_token_id] = float("-inf")
        return scores


class RowBudgets(StoppingCriteria):
    """Row i stops after `limits[i]` new tokens, or as soon as `cancelled(i)` says so (a client gone)."""

    def __init__(self, prompt_width: int, limits: Sequence[int], cancelled: Callable[[int], bool] | None = None):
        self.prompt_width, self.limits, self.cancelled = prompt_width, torch.tensor(limits), cancelled

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        done = (input_ids.shape[1] - self.prompt_width) >= self.limits.to(input_ids.device)
        if self.cancelled is not None:
            done |= torch.tensor([self.cancelled(i) for i in range(len(done))], device=done.device)
        return done


class _StepStreamer(BaseStreamer):
    """Hands each generation step's new token per row, (rows,), to `on_step` (the prompt is skipped)."""

    def __init__(self, on_step: Callable[[list[int]], None]):
        self.on_step, self.prompt_seen = on_step, False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.on_step(value.reshape(-1).tolist())

    def end(self) -> None:
        pass


@dataclass
class BatchOptions:
    """What a serving batch asks of a generation pass beyond greedy decoding to one budget: per row, a
    token budget, a temperature, a top-p and whether it may end early; a callback per step (streaming);
    a per-row cancellation."""

    limits: Sequence[int] | None = None
    temperatures: Sequence[float] | None = None
    top_ps: Sequence[float] | None = None
    on_step: Callable[[list[int]], None] | None = None
    cancelled: Callable[[int], bool] | None = None
    ignore_eos: Sequence[bool] | None = None


def _generate_batch(engine: Engine, prompts: list[list[int]], max_new_tokens: int, context: AbstractContextManager | None,
                    options: BatchOptions | None = None):
    """One left-padded batch through `generate` with the KV cache, raw logits kept; returns (prompt width, output).
    Called inside `_running(engine)`."""
    tokenizer, options = engine.tokenizer, options or BatchOptions()
    batch = padded(prompts, tokenizer.pad_token_id, next(engine.model.parameters()).device)
    width = batch["input_ids"].shape[1]
    settings, processors = {"do_sample": False}, LogitsProcessorList()
    if options.ignore_eos is not None and any(options.ignore_eos):
        processors.append(RowEndSuppressed(options.ignore_eos, tokenizer.eos_token_id))
    if options.temperatures is not None and any(t > 0 for t in options.temperatures):
        settings = {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0}
        processors.append(RowSampling(options.temperatures, options.top_ps or [1.0] * len(prompts)))
    if processors:
        settings["logits_processor"] = processors
    if options.limits is not None or options.cancelled is not None:
        limits = options.limits if options.limits is not None else [max_new_tokens] * len(prompts)
        max_new_tokens = max(limits)
        settings["stopping_criteria"] = StoppingCriteriaList([RowBudgets(width, limits, options.cancelled)])
    if options.on_step is not None:
        settings["streamer"] = _StepStreamer(options.on_step)
    with context or nullcontext():
        out = engine.model.generate(**batch, max_new_tokens=max_new_tokens, return_dict_in_generate=True, output_logits=True,
                                    pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, **settings)
    return width, out


def _generated_rows(tokenizer, width: int, out, candidates: dict[str, list[int]], limits: Sequence[int] | None = None) -> list[dict]:
    """Per row of a generation's output: its text up to the first end-of-sequence (or its own budget), the
    mean entropy and energy of the steps that produced it, how many tokens, and the yes / no / maybe
    decision of the first step."""
    entropy, energy = _step_signals(torch.stack(out.logits, 1))
    decisions = _decisions(out.logits[0], candidates)
    new_tokens = out.sequences[:, width:]
    rows = []
    for row in range(len(new_tokens)):
        limit = min(limits[row], new_tokens.shape[1]) if limits is not None else new_tokens.shape[1]
        ended = (new_tokens[row, :limit] == tokenizer.eos_token_id).nonzero()
        steps = int(ended[0]) + 1 if len(ended) else limit
        rows.append({"text": tokenizer.decode(new_tokens[row, :steps], skip_special_tokens=True).strip(),
                     "token_entropy": float(entropy[row, :steps].mean()), "energy": float(energy[row, :steps].mean()),
                     "decision": decisions[row], "tokens": steps - int(len(ended) > 0)})
    return rows


def generate_batch(engine: Engine, prompts: list[list[int]], max_new_tokens: int, context: AbstractContextManager | None = None,
                   options: BatchOptions | None = None) -> list[dict]:
    """One batch of prompts (token ids) answered together, as serving runs it: each row's result as
    `scored_generate` gives it, plus `tokens` (how many it generated, end-of-sequence not counted)."""
    with _running(engine):
        width, out = _generate_batch(engine, prompts, max_new_tokens, context, options)
        return _generated_rows(engine.tokenizer, width, out, answer_token_ids(engine.tokenizer), (options or BatchOptions()).limits)


def scored_generate(engine: Engine, requests: Sequence[Request], max_source_tokens: int, max_new_tokens: int,
                    batch_size: int = 8, progress: bool = False, description: str = "generating",
                    cache: InferenceCache | None = None, plan: Plan | None = None) -> list[GeneratedText]:
    """Greedy continuations with each step's entropy and energy, in the order given, and the yes / no / maybe
    decision read from the first step's distribution (the same forward pass over the prompt that
    `scored_answers` makes, so a question costs one pass, not two)."""
    tokenizer = engine.tokenizer
    plan = plan or engine.plan(requests)
    prompts = [prompt_ids(tokenizer, r, max_source_tokens) for r in requests]
    candidates = answer_token_ids(tokenizer)

    def compute(rows: list[int]) -> dict[int, dict]:
        results: dict[int, dict] = {}
        with _running(engine), tqdm(total=len(rows), desc=description, unit="request", disable=not progress) as bar:
            for chunk in _batches(_sorted_by_length(prompts, rows), batch_size):
                started = time.perf_counter()
                width, out = _generate_batch(engine, [prompts[i] for i in chunk], max_new_tokens,
                                             plan.context(list(chunk)) if plan.context else None)
                seconds = (time.perf_counter() - started) / len(chunk)
                for index, row in zip(chunk, _generated_rows(tokenizer, width, out, candidates)):
                    results[index] = {k: v for k, v in row.items() if k != "tokens"} | {"seconds": seconds}
                bar.update(len(chunk))
        return results

    precision = _precision(engine)
    found = _cached(cache, plan, lambda i, who: InferenceCache.key("generate/2", who, precision, max_new_tokens, prompts[i]),
                    len(requests), compute)
    return [GeneratedText(**result) for result in found]


def scored_answers(engine: Engine, requests: Sequence[Request], max_source_tokens: int, batch_size: int = 8,
                   progress: bool = False, cache: InferenceCache | None = None, plan: Plan | None = None) -> list[AnswerScore]:
    """The yes / no / maybe decision read from the next-token distribution after each question's prompt."""
    tokenizer = engine.tokenizer
    plan = plan or engine.plan(requests)
    candidates = answer_token_ids(tokenizer)
    prompts = [prompt_ids(tokenizer, r, max_source_tokens) for r in requests]

    def compute(rows: list[int]) -> dict[int, dict]:
        results: dict[int, dict] = {}
        with _running(engine) as (device, _):
            for chunk in tqdm(list(_batches(_sorted_by_length(prompts, rows), batch_size)), desc="answering", unit="batch",
                              disable=not progress):
                batch = padded([prompts[i] for i in chunk], tokenizer.pad_token_id, device)
                # Left padding puts every prompt's last token in the last column: one LM-head row per request.
                with plan.context(list(chunk)) if plan.context else nullcontext():
                    logits = engine.model(**batch, logits_to_keep=1).logits[:, -1].float()
                results |= dict(zip(chunk, _decisions(logits, candidates)))
        return results

    precision = _precision(engine)
    found = _cached(cache, plan, lambda i, who: InferenceCache.key("answer", who, precision, prompts[i]), len(requests), compute)
    return [AnswerScore(**result) for result in found]


def target_token_losses(engine: Engine, requests: Sequence[Request], examples: Sequence[TokenizedExample],
                        batch_size: int = 8, cache: InferenceCache | None = None, plan: Plan | None = None,
                        progress: bool = False, description: str = "target loss") -> list[tuple[float, int]]:
    """Per example: the (weighted) summed next-token loss of its target tokens and their count
    (perplexity = exp(sum / count))."""
    plan = plan or engine.plan(requests)
    sequences = [e.input_ids for e in examples]

    def compute(rows: list[int]) -> dict[int, dict]:
        results: dict[int, dict] = {}
        with _running(engine) as (device, _), tqdm(total=len(rows), desc=description, unit="request",
                                                   disable=not progress) as bar:
            for chunk in _batches(_sorted_by_length(sequences, rows), batch_size):
                batch = collate([examples[i] for i in chunk], engine.tokenizer.pad_token_id, device)
                with plan.context(list(chunk)) if plan.context else nullcontext():
                    losses = target_losses(engine.model, batch)
                for row, index in enumerate(chunk):
                    results[index] = {"loss": float(losses[row]), "tokens": examples[index].supervised_tokens}
                bar.update(len(chunk))
        return results

    precision = _precision(engine)
    found = _cached(cache, plan, lambda i, who: InferenceCache.key(
        "loss", who, precision, examples[i].input_ids, examples[i].labels, examples[i].answer_weight), len(examples), compute)
    return [(result["loss"], result["tokens"]) for result in found]


class TopKCache(InferenceCache):
    """A teacher's top-k logits per example (`target_top_k`), as raw arrays: int32 token ids and float16 logits,
    (target tokens, k) each, about 6 bytes per kept logit."""

    FILE = Path("data/cache/teacher_top_k.sqlite")

    @staticmethod
    def encode(value: dict) -> bytes:
        indices, values = np.asarray(value["indices"], dtype=np.int32), np.asarray(value["values"], dtype=np.float16)
        return np.array(indices.shape, dtype=np.int32).tobytes() + indices.tobytes() + values.tobytes()

    @staticmethod
    def decode(stored: bytes) -> dict:
        rows, k = np.frombuffer(stored[:8], dtype=np.int32)
        size = int(rows) * int(k)
        indices = np.frombuffer(stored[8 : 8 + 4 * size], dtype=np.int32).reshape(rows, k)
        values = np.frombuffer(stored[8 + 4 * size :], dtype=np.float16).reshape(rows, k)
        return {"indices": indices, "values": values}


def target_top_k(engine: Engine, requests: Sequence[Request], examples: Sequence[TokenizedExample], k: int,
                 batch_size: int = 8, cache: TopKCache | None = None, plan: Plan | None = None,
                 progress: bool = False) -> list[dict]:
    """Per example: the engine's k largest next-token logits at each of its target tokens, in order, as
    {"indices": int32 (targets, k), "values": float16 (targets, k)}: computed once per weights and tokens,
    then read from `cache` (soft targets of distillation, re-used by every epoch and every student)."""
    plan = plan or engine.plan(requests)
    sequences = [e.input_ids for e in examples]

    def compute(rows: list[int]) -> dict[int, dict]:
        results: dict[int, dict] = {}
        with _running(engine) as (device, _), tqdm(total=len(rows), desc="teacher top-k", unit="example",
                                                   disable=not progress) as bar:
            for chunk in _batches(_sorted_by_length(sequences, rows), batch_size):
                batch = collate([examples[i] for i in chunk], engine.tokenizer.pad_token_id, device)
                with plan.context(list(chunk)) if plan.context else nullcontext():
                    logits, positions = target_logits(engine.model, batch)
                top = logits.float().topk(min(k, logits.shape[-1]), dim=-1)
                counts = positions.sum(1).tolist()
                for index, values, indices in zip(chunk, top.values.split(counts), top.indices.split(counts)):
                    results[index] = {"indices": indices.to(torch.int32).cpu().numpy(),
                                      "values": values.to(torch.float16).cpu().numpy()}
                bar.update(len(chunk))
        return results

    precision = _precision(engine)
    return _cached(cache, plan, lambda i, who: InferenceCache.key("top_k", who, precision, k, examples[i].input_ids,
                                                                  examples[i].labels), len(examples), compute)


def pooled_hidden_states(decoder, tokenizer, requests: Sequence[Request], note_tokens: int, question_tokens: int,
                         layers: Sequence[int], batch_size: int = 16, precision: str = "auto",
                         progress: bool = False) -> dict[int, torch.Tensor]:
    """Per layer l in `layers` (1 to the decoder's depth): (requests, hidden size) float32, the output of decoder
    layer l under the decoder's final norm, mean over the prompt's tokens: what the decoder would give if it
    had only its first l layers. One pass, through the deepest layer asked for and no further. Prompts are
    cut as the experts see them: notes to `note_tokens`, abstracts to `question_tokens`. `decoder` is the
    decoder stack (embeddings, layers, norm) of a causal LM."""
    depth = len(decoder.layers)
    if not layers or not all(1 <= layer <= depth for layer in layers):
        raise ValueError(f"layers {list(layers)}: the base model has decoder layers 1 to {depth}")
    prompts = [prompt_ids(tokenizer, r, question_tokens if r.is_question else note_tokens) for r in requests]
    features = {layer: torch.zeros((len(prompts), decoder.config.hidden_size)) for layer in layers}
    outputs: dict[int, torch.Tensor] = {}
    hooks = [decoder.layers[layer - 1].register_forward_hook(
        lambda module, args, output, layer=layer: outputs.__setitem__(layer, output[0] if isinstance(output, tuple) else output))
        for layer in set(layers)]
    engine = AdapterEngine(decoder, tokenizer, precision=precision)
    all_layers, decoder.layers = decoder.layers, decoder.layers[: max(layers)]
    try:
        with _running(engine) as (device, _), tqdm(total=len(prompts), desc="routing features", unit="request",
                                                   disable=not progress) as bar:
            for chunk in _batches(_sorted_by_length(prompts), batch_size):
                batch = padded([prompts[i] for i in chunk], tokenizer.pad_token_id, device, side="right")
                decoder(**batch)
                weights = batch["attention_mask"].unsqueeze(-1).float()
                for layer in layers:
                    hidden = decoder.norm(outputs[layer]).float()
                    features[layer][list(chunk)] = ((hidden * weights).sum(1) / weights.sum(1)).cpu()
                bar.update(len(chunk))
    finally:
        decoder.layers = all_layers
        for hook in hooks:
            hook.remove()
    return features


def generate(model, tokenizer, requests: Sequence[Request], max_source_tokens: int, max_new_tokens: int,
             batch_size: int = 8, progress: bool = False, description: str = "generating",
             batch_context: BatchContext | None = None, precision: str = "auto") -> list[str]:
    """Greedy continuations, one per request, in the order given. `batch_context(indices)`, when given, is
    entered around each batch with the indices of its requests (a mixture of experts sets each row's weights)."""
    engine = PlannedEngine(model, tokenizer, Plan(batch_context), precision)
    return [g.text for g in scored_generate(engine, requests, max_source_tokens, max_new_tokens, batch_size, progress,
                                            description)]


def answer_probabilities(model, tokenizer, requests: Sequence[Request], max_source_tokens: int, batch_size: int = 8,
                         progress: bool = False, batch_context: BatchContext | None = None,
                         precision: str = "auto") -> list[dict[str, float]]:
    """P(yes), P(no), P(maybe) from the next-token distribution after the prompt, renormalised over the three."""
    engine = PlannedEngine(model, tokenizer, Plan(batch_context), precision)
    return [{a: round(p, 6) for a, p in score.probabilities.items()}
            for score in scored_answers(engine, requests, max_source_tokens, batch_size, progress)]


def best_answer(probabilities: dict[str, float]) -> str:
    return max(probabilities, key=probabilities.get)


def respond(model, tokenizer, requests: Sequence[Request], max_source_tokens: int, max_new_tokens: int,
            batch_size: int = 8, progress: bool = False, batch_context: BatchContext | None = None,
            precision: str = "auto") -> list[dict]:
    """What `medlora predict` and the served models add to each record: `prediction`, and for questions
    `answer` with its probabilities (read from the generation's first step)."""
    engine = PlannedEngine(model, tokenizer, Plan(batch_context), precision)
    responses = []
    for request, generated in zip(requests, scored_generate(engine, requests, max_source_tokens, max_new_tokens, batch_size,
                                                            progress)):
        response = {"prediction": generated.text}
        if request.is_question:
            probabilities = {a: round(p, 6) for a, p in generated.decision.probabilities.items()}
            response |= {"answer": best_answer(probabilities), "answer_probabilities": probabilities}
        responses.append(response)
    return responses
