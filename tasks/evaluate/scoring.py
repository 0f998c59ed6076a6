"""What a model does on held-out requests, with the training-free signals of how sure it was.

An `Engine` is anything that can be scored: a causal LM (with or without adapters), its tokenizer,
and per batch the context that configures it (the router sets each row's mix of experts). Every
candidate, the base model and the current champions are scored through the same functions, so a
new kind of candidate (a distilled student) needs only an engine.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Protocol

import torch
from tqdm import tqdm

from tasks.finetune.examples import ANSWERS, Request, TokenizedExample, answer_token_ids, prompt_ids
from tasks.finetune.inference import _batches, _left_padded, _sorted_by_length
from tasks.finetune.train import autocast, collate, resolve_precision, target_losses

BatchContext = Callable[[list[int]], AbstractContextManager]


class Engine(Protocol):
    model: torch.nn.Module
    tokenizer: object

    def batch_context(self, requests: Sequence[Request]) -> BatchContext | None:
        """Called once with every request to be scored; the result is entered around each batch with the
        indices of its requests."""


@dataclass
class AdapterEngine:
    """A base model, or a base model with one PEFT adapter; `context`, when given, is a batch context
    already computed for the requests to be scored (so that a router routes them once)."""

    model: torch.nn.Module
    tokenizer: object
    context: BatchContext | None = None

    def batch_context(self, requests: Sequence[Request]) -> BatchContext | None:
        return self.context


@dataclass
class GeneratedText:
    text: str
    token_entropy: float   # mean entropy (nats) of the next-token distributions that produced the text
    energy: float          # mean of -logsumexp(logits) over those steps: higher is less familiar input
    seconds: float         # this request's share of its batch's wall time


@dataclass
class AnswerScore:
    probabilities: dict[str, float]   # over yes / no / maybe, renormalised
    entropy: float                    # of the whole next-token distribution where the decision is read
    energy: float                     # -logsumexp of those logits

    @property
    def answer(self) -> str:
        return max(self.probabilities, key=self.probabilities.get)

    @property
    def answer_entropy(self) -> float:
        return -sum(p * math.log(p) for p in self.probabilities.values() if p > 0)


def _step_signals(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropy and energy of each row of next-token logits (..., vocab)."""
    logits = logits.float()
    log_probabilities = logits.log_softmax(-1)
    entropy = -(log_probabilities.exp() * log_probabilities).sum(-1)
    return entropy, -torch.logsumexp(logits, -1)


def _device_and_precision(model) -> tuple[torch.device, str]:
    device = next(model.parameters()).device
    return device, resolve_precision("auto", device)


@torch.no_grad()
def scored_generate(engine: Engine, requests: Sequence[Request], max_source_tokens: int, max_new_tokens: int,
                    batch_size: int = 8, progress: bool = False, description: str = "generating") -> list[GeneratedText]:
    """Greedy continuations with each step's entropy and energy, in the order given."""
    model, tokenizer = engine.model, engine.tokenizer
    model.eval()
    device, precision = _device_and_precision(model)
    context = engine.batch_context(requests)
    prompts = [prompt_ids(tokenizer, r, max_source_tokens) for r in requests]
    results: list[GeneratedText | None] = [None] * len(requests)
    with tqdm(total=len(requests), desc=description, unit="request", disable=not progress) as bar:
        for chunk in _batches(_sorted_by_length(prompts), batch_size):
            batch = _left_padded([prompts[i] for i in chunk], tokenizer.pad_token_id, device)
            started = time.perf_counter()
            with context(list(chunk)) if context else nullcontext(), autocast(device, precision):
                out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, return_dict_in_generate=True,
                                     output_logits=True, pad_token_id=tokenizer.pad_token_id,
                                     eos_token_id=tokenizer.eos_token_id)
            seconds = (time.perf_counter() - started) / len(chunk)
            entropy, energy = _step_signals(torch.stack(out.logits, 1))
            new_tokens = out.sequences[:, batch["input_ids"].shape[1]:]
            for row, index in enumerate(chunk):
                ended = (new_tokens[row] == tokenizer.eos_token_id).nonzero()
                steps = int(ended[0]) + 1 if len(ended) else new_tokens.shape[1]
                results[index] = GeneratedText(tokenizer.decode(new_tokens[row, :steps], skip_special_tokens=True).strip(),
                                               float(entropy[row, :steps].mean()), float(energy[row, :steps].mean()), seconds)
            bar.update(len(chunk))
    return results


@torch.no_grad()
def scored_answers(engine: Engine, requests: Sequence[Request], max_source_tokens: int, batch_size: int = 8,
                   progress: bool = False) -> list[AnswerScore]:
    """The yes / no / maybe decision read from the next-token distribution after each question's prompt."""
    model, tokenizer = engine.model, engine.tokenizer
    model.eval()
    device, precision = _device_and_precision(model)
    context = engine.batch_context(requests)
    candidates = answer_token_ids(tokenizer)
    prompts = [prompt_ids(tokenizer, r, max_source_tokens) for r in requests]
    results: list[AnswerScore | None] = [None] * len(requests)
    for chunk in tqdm(list(_batches(_sorted_by_length(prompts), batch_size)), desc="answering", unit="batch",
                      disable=not progress):
        batch = _left_padded([prompts[i] for i in chunk], tokenizer.pad_token_id, device)
        with context(list(chunk)) if context else nullcontext(), autocast(device, precision):
            logits = model(**batch, logits_to_keep=1).logits[:, -1].float()
        entropy, energy = _step_signals(logits)
        probabilities = logits.softmax(-1)
        for row, index in enumerate(chunk):
            mass = {a: probabilities[row, candidates[a]].sum().item() for a in ANSWERS}
            total = sum(mass.values()) or 1.0
            results[index] = AnswerScore({a: m / total for a, m in mass.items()}, float(entropy[row]), float(energy[row]))
    return results


@torch.no_grad()
def target_token_losses(engine: Engine, requests: Sequence[Request], examples: Sequence[TokenizedExample],
                        batch_size: int = 8) -> list[tuple[float, int]]:
    """Per example: the summed next-token loss of its target tokens and their count (perplexity = exp(sum / count))."""
    model = engine.model
    model.eval()
    device, precision = _device_and_precision(model)
    context = engine.batch_context(requests)
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    results: list[tuple[float, int]] = [(0.0, 0)] * len(examples)
    for chunk in _batches(order, batch_size):
        batch = collate([examples[i] for i in chunk], engine.tokenizer.pad_token_id, device)
        with context(list(chunk)) if context else nullcontext(), autocast(device, precision):
            losses = target_losses(model, batch)
        for row, index in enumerate(chunk):
            results[index] = (float(losses[row]), examples[index].supervised_tokens)
    return results
