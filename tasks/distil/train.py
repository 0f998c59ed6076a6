"""One student trained on weighted losses: hard (the teacher's generations), soft (the teacher's cached top-k
distribution on the gold targets) and supervised (the gold targets). Every weight of the student trains but the
(tied) embeddings, unless asked; the loop otherwise follows tasks/finetune/train.py (length-grouped batches, cosine
schedule, validation loss every `eval_every` steps with the best weights kept)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import get_cosine_schedule_with_warmup

from tasks.distil.losses import soft_target_loss
from tasks.finetune.examples import TokenizedExample
from tasks.finetune.precision import autocast
from tasks.finetune.train import collate, epoch_batches, evaluate_loss, peak_memory_mb, reset_peak_memory, set_seed, target_logits
from tasks.params import DistilParams

GOLD, TEACHER = "gold", "teacher"   # an example's target: the reference, or the teacher's generation


@dataclass
class DistilExample:
    example: TokenizedExample
    kind: str                      # GOLD or TEACHER
    top_k: dict | None = None      # gold examples: the teacher's top-k logits at each target token

    @property
    def input_ids(self) -> list[int]:  # what length-grouped batching sorts by
        return self.example.input_ids


@dataclass
class StudentReport:
    name: str
    loss_weights: dict[str, float]
    examples: dict[str, int]
    steps: int = 0
    loss_per_step: dict[str, list[float]] = field(default_factory=dict)
    val_loss_per_eval: list[tuple[int, float]] = field(default_factory=list)
    val_loss: float | None = None
    trainable_parameters: int = 0
    seconds: float = 0.0
    peak_memory_mb: float = 0.0


def batch_losses(model, batch_examples: list[DistilExample], pad_id: int, device: torch.device, temperature: float,
                 divergence: str) -> dict[str, torch.Tensor]:
    """Summed losses of one batch: hard (teacher targets), supervised (gold targets) and soft (gold targets, against
    the teacher's top-k), with the number of target tokens each was summed over."""
    batch = collate([e.example for e in batch_examples], pad_id, device)
    logits, positions = target_logits(model, batch)
    labels = batch["labels"][:, 1:][positions]
    cross_entropy = F.cross_entropy(logits.float(), labels, reduction="none") * batch["loss_weights"][:, 1:][positions]
    rows = positions.nonzero()[:, 0]
    gold_rows = torch.tensor([e.kind == GOLD for e in batch_examples], device=rows.device)[rows]
    losses = {"hard": cross_entropy[~gold_rows].sum(), "supervised": cross_entropy[gold_rows].sum(),
              "hard_tokens": int((~gold_rows).sum()), "gold_tokens": int(gold_rows.sum())}
    top_k = [e.top_k for e in batch_examples if e.kind == GOLD]
    if top_k and all(t is not None for t in top_k):  # in row order, as the target positions are
        values = torch.from_numpy(np.concatenate([t["values"] for t in top_k])).to(device)
        indices = torch.from_numpy(np.concatenate([t["indices"] for t in top_k])).to(device)
        losses["soft"] = soft_target_loss(logits[gold_rows], values, indices, temperature, divergence).sum()
    else:
        losses["soft"] = logits.new_zeros(())
    return losses


def trainable_parameters(model, train_embeddings: bool) -> list[torch.nn.Parameter]:
    embeddings = {id(p) for p in model.get_input_embeddings().parameters()} | {id(p) for p in model.get_output_embeddings().parameters()}
    chosen = []
    for parameter in model.parameters():
        parameter.requires_grad_(train_embeddings or id(parameter) not in embeddings)
        if parameter.requires_grad:
            chosen.append(parameter)
    return chosen


def train_student(name: str, model, train: list[DistilExample], val: list[TokenizedExample], weights: dict[str, float],
                  params: DistilParams, pad_id: int, seed: int, device: torch.device, precision: str,
                  progress: bool = True) -> StudentReport:
    """Train `model` in place; its weights end as the best on validation loss (gold targets) when evaluating."""
    set_seed(seed)
    used = [e for e in train if (e.kind == TEACHER and weights["hard"]) or (e.kind == GOLD and (weights["soft"] or weights["supervised"]))]
    if not used:
        raise ValueError(f"student {name}: no training examples carry a loss with weights {weights}")
    report = StudentReport(name, weights, {kind: sum(e.kind == kind for e in used) for kind in (GOLD, TEACHER)},
                           loss_per_step={"total": [], "hard": [], "soft": [], "supervised": []})
    trainable = trainable_parameters(model, params.train_embeddings)
    report.trainable_parameters = sum(p.numel() for p in trainable)
    optimizer = torch.optim.AdamW(trainable, lr=params.learning_rate, weight_decay=0.0)
    scheduler = get_cosine_schedule_with_warmup(optimizer, params.warmup_steps, params.max_steps)
    best_loss, best_state = math.inf, None
    if params.eval_every and val:
        best_loss = evaluate_loss(model, val, params.batch_size, pad_id, device, precision)
        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        report.val_loss_per_eval.append((0, round(best_loss, 5)))
    model.train()
    reset_peak_memory(device)
    started, epoch, batches = time.perf_counter(), 0, epoch_batches(used, params.batch_size, seed, 0)
    for step in tqdm(range(1, params.max_steps + 1), desc=f"distilling {name}", unit="step", disable=not progress):
        if not batches:
            epoch += 1
            batches = epoch_batches(used, params.batch_size, seed, epoch)
        with autocast(device, precision):
            parts = batch_losses(model, batches.pop(), pad_id, device, params.temperature, params.divergence)
        tokens = parts["hard_tokens"] * bool(weights["hard"]) + parts["gold_tokens"] * bool(weights["soft"] or weights["supervised"])
        loss = sum(weights[kind] * parts[kind] for kind in ("hard", "soft", "supervised")) / max(tokens, 1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"student {name}: training loss is {loss.item()} at step {step}; lower distil.learning_rate")
        report.loss_per_step["total"].append(round(loss.item(), 5))
        for kind, count in (("hard", parts["hard_tokens"]), ("soft", parts["gold_tokens"]), ("supervised", parts["gold_tokens"])):
            report.loss_per_step[kind].append(round(parts[kind].item() / count, 5) if count else None)
        report.steps = step
        if params.eval_every and val and (step % params.eval_every == 0 or step == params.max_steps):
            val_loss = evaluate_loss(model, val, params.batch_size, pad_id, device, precision)
            model.train()
            report.val_loss_per_eval.append((step, round(val_loss, 5)))
            if val_loss < best_loss:
                best_loss, best_state = val_loss, {k: v.detach().clone() for k, v in model.state_dict().items()}
    if best_state is not None:
        model.load_state_dict(best_state)
        report.val_loss = round(best_loss, 5)
    elif val:
        report.val_loss = round(evaluate_loss(model, val, params.batch_size, pad_id, device, precision), 5)
    model.eval()
    model.requires_grad_(False)
    report.seconds = round(time.perf_counter() - started, 2)
    report.peak_memory_mb = peak_memory_mb(device)
    return report
