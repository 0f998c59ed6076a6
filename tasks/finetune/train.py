"""One LoRA expert, trained with an explicit loop (read top to bottom, as in torchtune's recipes).

Work saved on a CPU, each measured in docs/BENCHMARKS.md:
- batches are grouped by length, so padding stays small;
- the LM head (49,152 x 576 for SmolLM2) and the softmax over the vocabulary run only on positions
  that carry a loss, i.e. the target tokens;
- bf16 autocast where the hardware has bf16 matrix units (GPUs, AVX512-BF16 or AMX CPUs); the LoRA
  weights and the optimizer state stay fp32.

A run writes a checkpoint every `checkpoint_every` optimizer steps; started again after a kill, it
resumes from there (weights, optimizer, schedule, data order and random state) and ends with the same
number of optimizer steps as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from tqdm import tqdm
from transformers import get_cosine_schedule_with_warmup

from tasks.finetune.examples import IGNORE_INDEX, Request, TokenizedExample, tokenize_example
from tasks.finetune.precision import autocast, frozen_weights_cast, resolve_precision
from tasks.params import FinetuneParams

TRAINING_REPORT = "training.json"
CHECKPOINT_FILE = "checkpoint.pt"
log = logging.getLogger(__name__)


@dataclass
class TrainingReport:
    expert: str
    train_examples: int
    val_examples: int
    steps: int = 0
    loss_per_step: list[float] = field(default_factory=list)
    val_loss_per_eval: list[tuple[int, float]] = field(default_factory=list)
    val_loss: float | None = None  # of the adapter that is saved (the best one when evaluating)
    val_metrics: dict[str, float] = field(default_factory=dict)
    data_provenance: dict[str, str | int] = field(default_factory=dict)  # synthetic examples, how made, whether kept
    stopped_early: bool = False
    resumed_from_step: int = 0
    tokens: int = 0
    supervised_tokens: int = 0
    seconds: float = 0.0
    tokens_per_second: float = 0.0
    supervised_tokens_per_second: float = 0.0
    peak_memory_mb: float = 0.0
    trainable_parameters: int = 0
    precision: str = "fp32"
    device: str = "cpu"
    threads: int = 1


def length_grouped_batches(examples: list[TokenizedExample], batch_size: int, rng: random.Random) -> list[list[TokenizedExample]]:
    """Shuffle, then sort within windows of 8 batches by length: little padding, still random order."""
    order = examples[:]
    rng.shuffle(order)
    window = batch_size * 8
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda e: len(e.input_ids))
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def epoch_batches(examples: list[TokenizedExample], batch_size: int, seed: int, epoch: int) -> list[list[TokenizedExample]]:
    """The batches of one epoch, fixed by (seed, epoch) alone, so a resumed run sees the same order."""
    return length_grouped_batches(examples, batch_size, random.Random(f"{seed}:{epoch}"))


def collate(batch: list[TokenizedExample], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    weights = torch.zeros((len(batch), width), dtype=torch.float)
    for row, example in enumerate(batch):
        n = len(example.input_ids)
        ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        mask[row, :n] = 1
        supervised = labels[row] != IGNORE_INDEX
        weights[row, supervised] = 1.0
        weights[row, int(supervised.nonzero()[0])] = example.answer_weight
    # With no padding in the batch, attention needs no mask and takes the fused causal kernel.
    return {"input_ids": ids.to(device), "labels": labels.to(device), "loss_weights": weights.to(device),
            "attention_mask": None if bool(mask.all()) else mask.to(device)}


def target_logits(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The next-token logits at every target token of the batch, (targets, vocab) in row-major order, and where
    they are: (rows, width - 1) True at each position that predicts a target token. The LM head runs only there."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = causal_lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    positions = batch["labels"][:, 1:] != IGNORE_INDEX
    return causal_lm.lm_head(hidden[:, :-1][positions]), positions


def target_losses(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per row, the weighted sum of the next-token losses of its target tokens."""
    logits, positions = target_logits(model, batch)
    next_labels = batch["labels"][:, 1:]
    losses = F.cross_entropy(logits.float(), next_labels[positions], reduction="none") * batch["loss_weights"][:, 1:][positions]
    rows = positions.nonzero()[:, 0]
    return torch.zeros(len(next_labels), device=losses.device, dtype=losses.dtype).index_add(0, rows, losses)


def summed_target_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return target_losses(model, batch).sum()


@torch.no_grad()
def evaluate_loss(model, examples: list[TokenizedExample], batch_size: int, pad_id: int, device: torch.device,
                  precision: str = "fp32") -> float | None:
    """Mean loss per target token over `examples` (weighted, when questions weigh their answer more)."""
    if not examples:
        return None
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    ordered = sorted(examples, key=lambda e: len(e.input_ids))
    with autocast(device, precision):
        for start in range(0, len(ordered), batch_size):
            chunk = ordered[start : start + batch_size]
            total += summed_target_loss(model, collate(chunk, pad_id, device)).item()
            tokens += sum(e.loss_weight for e in chunk)
    model.train(was_training)
    return total / tokens


def add_lora(model, params: FinetuneParams):
    config = LoraConfig(
        r=params.lora.r, lora_alpha=params.lora.alpha, lora_dropout=params.lora.dropout,
        target_modules=params.lora.target_modules, task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def run_fingerprint(expert: str, params: FinetuneParams, seed: int, examples: list[TokenizedExample],
                    init_adapter: Path | None = None) -> str:
    """A checkpoint is resumed only by the run that wrote it: same expert, params, seed, data and start."""
    digest = hashlib.sha256(f"{expert}|{params.model_dump_json()}|{seed}".encode())
    if init_adapter is not None:
        digest.update((init_adapter / "adapter_model.safetensors").read_bytes())
    for example in examples:
        digest.update(str(example.input_ids).encode())
    return digest.hexdigest()[:16]


@dataclass
class LoopState:
    """Everything a resumed run needs besides the weights and the optimizer."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_val_loss: float = math.inf
    evals_without_improvement: int = 0
    best_adapter: dict | None = None


def save_checkpoint(path: Path, fingerprint: str, model, optimizer, scheduler, state: LoopState, report: TrainingReport) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save({
        "fingerprint": fingerprint, "adapter": get_peft_model_state_dict(model), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), "state": asdict(state), "report": asdict(report),
        "torch_rng": torch.get_rng_state(), "python_rng": random.getstate(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }, partial)
    os.replace(partial, path)  # a kill while writing leaves the previous checkpoint intact


def load_checkpoint(path: Path, fingerprint: str, model, optimizer, scheduler) -> tuple[LoopState, dict] | None:
    if not path.exists():
        return None
    saved = torch.load(path, weights_only=False, map_location="cpu")
    if saved["fingerprint"] != fingerprint:
        log.warning("%s was written by a run with other params or data: starting afresh", path)
        return None
    set_peft_model_state_dict(model, saved["adapter"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["torch_rng"])
    random.setstate(saved["python_rng"])
    if saved["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["cuda_rng"])
    return LoopState(**saved["state"]), saved["report"]


def reset_peak_memory(device: torch.device) -> None:
    """Start the peak-memory count at this training run, not at the start of the process (stages share one)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM to the current resident size
    except OSError:
        pass  # elsewhere the figure is the process's peak


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated, or the peak resident memory of this process (VmHWM) on a CPU."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux, the process peak


def train_expert_adapter(
    expert: str,
    train_records: list[tuple[Request, str]],
    val_records: list[tuple[Request, str]],
    tokenizer,
    base_model,
    params: FinetuneParams,
    output_dir: Path,
    seed: int,
    device: torch.device,
    checkpoint_dir: Path | None = None,
    progress: bool = True,
    init_adapter: Path | None = None,
) -> tuple[TrainingReport, torch.nn.Module]:
    """Train one adapter on (request, target) pairs; save it in PEFT format with its training report.

    `init_adapter`: start from this PEFT adapter (a specialty expert specialising the multi-task one)
    instead of a fresh LoRA; it is then the first candidate for the best adapter, so that the result
    is never worse on validation than where it started.
    Returns the report and the trained PEFT model (the best one by validation loss when evaluating).
    """
    if params.threads:
        torch.set_num_threads(params.threads)
    set_seed(seed)
    encode = lambda records: [  # noqa: E731
        tokenize_example(tokenizer, request, target, params.max_source_tokens, params.max_target_tokens, params.answer_weight)
        for request, target in records
    ]
    train_examples, val_examples = encode(train_records), encode(val_records)
    if not train_examples:
        raise ValueError(f"expert {expert!r} has no training examples; check experts in params.yaml and the split")

    if init_adapter is not None:
        model = PeftModel.from_pretrained(base_model, init_adapter, is_trainable=True).to(device)
    else:
        model = add_lora(base_model, params).to(device)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=params.learning_rate, weight_decay=params.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, params.warmup_steps, params.max_steps)
    precision = resolve_precision(params.precision, device)
    pad_id = tokenizer.pad_token_id
    evaluating = bool(val_examples) and params.eval_every > 0

    report = TrainingReport(expert, len(train_examples), len(val_examples), trainable_parameters=sum(p.numel() for p in trainable),
                            precision=precision, device=device.type, threads=torch.get_num_threads())
    state = LoopState()
    fingerprint = run_fingerprint(expert, params, seed, train_examples + val_examples, init_adapter)
    checkpoint = checkpoint_dir / expert / CHECKPOINT_FILE if checkpoint_dir and params.checkpoint_every > 0 else None
    if checkpoint and (resumed := load_checkpoint(checkpoint, fingerprint, model, optimizer, scheduler)):
        state, saved_report = resumed
        report = TrainingReport(**{**saved_report, "resumed_from_step": state.step})
        log.info("expert %s: resuming from step %s of %s", expert, state.step, params.max_steps)

    elif init_adapter is not None and evaluating:
        state.best_val_loss = evaluate_loss(model, val_examples, params.batch_size, pad_id, device, precision)
        state.best_adapter = {k: v.detach().clone().cpu() for k, v in get_peft_model_state_dict(model).items()}
        report.val_loss_per_eval.append((0, round(state.best_val_loss, 5)))

    batches = epoch_batches(train_examples, params.batch_size, seed, state.epoch)
    reset_peak_memory(device)
    seconds_before = report.seconds
    started = time.perf_counter()
    bar = tqdm(total=params.max_steps, initial=state.step, desc=f"training {expert}", unit="step", disable=not progress)
    with frozen_weights_cast(model, precision):
        while state.step < params.max_steps and not report.stopped_early:
            micro_batches = []
            for _ in range(params.gradient_accumulation):
                if state.batch_in_epoch == len(batches):
                    state.epoch, state.batch_in_epoch = state.epoch + 1, 0
                    batches = epoch_batches(train_examples, params.batch_size, seed, state.epoch)
                micro_batches.append(batches[state.batch_in_epoch])
                state.batch_in_epoch += 1
            # Every target token of the optimizer step weighs the same, however the micro-batches split them.
            step_weight = sum(e.loss_weight for batch in micro_batches for e in batch)
            step_loss = 0.0
            for batch in micro_batches:
                with autocast(device, precision):
                    loss = summed_target_loss(model, collate(batch, pad_id, device)) / step_weight
                loss.backward()
                step_loss += loss.item()
                report.tokens += sum(len(e.input_ids) for e in batch)
                report.supervised_tokens += sum(e.supervised_tokens for e in batch)
            torch.nn.utils.clip_grad_norm_(trainable, params.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if not math.isfinite(step_loss):
                raise FloatingPointError(f"expert {expert!r}: training loss is {step_loss} at step {state.step + 1}; lower finetune.learning_rate")
            state.step += 1
            report.loss_per_step.append(round(step_loss, 5))
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.3f}")

            if evaluating and (state.step % params.eval_every == 0 or state.step == params.max_steps):
                val_loss = evaluate_loss(model, val_examples, params.batch_size, pad_id, device, precision)
                report.val_loss_per_eval.append((state.step, round(val_loss, 5)))
                if val_loss < state.best_val_loss - params.early_stopping_min_delta:
                    state.best_val_loss, state.evals_without_improvement = val_loss, 0
                    state.best_adapter = {k: v.detach().clone().cpu() for k, v in get_peft_model_state_dict(model).items()}
                else:
                    state.evals_without_improvement += 1
                    report.stopped_early = 0 < params.early_stopping_patience <= state.evals_without_improvement
            report.steps = state.step
            report.seconds = round(seconds_before + time.perf_counter() - started, 2)
            if checkpoint and (state.step % params.checkpoint_every == 0 and state.step < params.max_steps):
                save_checkpoint(checkpoint, fingerprint, model, optimizer, scheduler, state, report)
    bar.close()

    if state.best_adapter is not None:
        set_peft_model_state_dict(model, state.best_adapter)
        report.val_loss = round(state.best_val_loss, 5)
    else:
        report.val_loss = evaluate_loss(model, val_examples, params.batch_size, pad_id, device, precision)
    if report.val_loss is not None:
        if not math.isfinite(report.val_loss):
            raise FloatingPointError(f"expert {expert!r}: validation loss is {report.val_loss}; lower finetune.learning_rate")
        report.val_metrics["val_perplexity"] = round(math.exp(report.val_loss), 4)
    report.tokens_per_second = round(report.tokens / report.seconds, 1) if report.seconds else 0.0
    report.supervised_tokens_per_second = round(report.supervised_tokens / report.seconds, 1) if report.seconds else 0.0
    report.peak_memory_mb = peak_memory_mb(device)

    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    write_report(output_dir, report)
    if checkpoint:
        checkpoint.unlink(missing_ok=True)
    return report, model


def write_report(output_dir: Path, report: TrainingReport) -> None:
    (output_dir / TRAINING_REPORT).write_text(json.dumps(asdict(report), indent=2))
