"""One LoRA expert, trained with an explicit loop (read top to bottom, as in torchtune's recipes).

Work saved on a CPU: batches are grouped by length so padding stays small, and the LM head
(49,152 x 576 for SmolLM2, about a fifth of the FLOPs) runs only on positions that carry a loss.
"""

from __future__ import annotations

import json
import math
import random
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from tqdm import tqdm
from transformers import get_cosine_schedule_with_warmup

from tasks.finetune.examples import IGNORE_INDEX, TokenizedExample, tokenize_example
from tasks.params import FinetuneParams

TRAINING_REPORT = "training.json"


@dataclass
class TrainingReport:
    expert: str
    train_examples: int
    val_examples: int
    steps: int
    loss_per_step: list[float] = field(default_factory=list)
    val_loss: float | None = None
    tokens: int = 0
    supervised_tokens: int = 0
    seconds: float = 0.0
    tokens_per_second: float = 0.0
    peak_memory_mb: float = 0.0
    trainable_parameters: int = 0


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


def collate(batch: list[TokenizedExample], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, example in enumerate(batch):
        n = len(example.input_ids)
        ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        mask[row, :n] = 1
    return {"input_ids": ids.to(device), "labels": labels.to(device), "attention_mask": mask.to(device)}


def target_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token loss over target tokens, with the LM head applied only where it is needed."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = causal_lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    next_labels = batch["labels"][:, 1:]
    positions = next_labels != IGNORE_INDEX
    logits = causal_lm.lm_head(hidden[:, :-1][positions])
    return F.cross_entropy(logits.float(), next_labels[positions])


@torch.no_grad()
def evaluate_loss(model, examples: list[TokenizedExample], batch_size: int, pad_id: int, device: torch.device) -> float | None:
    if not examples:
        return None
    model.eval()
    total, weight = 0.0, 0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        tokens = sum(e.supervised_tokens for e in chunk)
        total += target_loss(model, collate(chunk, pad_id, device)).item() * tokens
        weight += tokens
    model.train()
    return total / weight


def add_lora(model, params: FinetuneParams):
    config = LoraConfig(
        r=params.lora.r, lora_alpha=params.lora.alpha, lora_dropout=params.lora.dropout,
        target_modules=params.lora.target_modules, task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def train_expert_adapter(
    expert: str,
    train_records: list[tuple[str, str]],
    val_records: list[tuple[str, str]],
    tokenizer,
    base_model,
    params: FinetuneParams,
    output_dir: Path,
    seed: int,
    device: torch.device,
    progress: bool = True,
) -> TrainingReport:
    """Train one adapter on (note, target) pairs; save it in PEFT format with its training report."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    encode = lambda records: [  # noqa: E731
        tokenize_example(tokenizer, note, target, params.max_source_tokens, params.max_target_tokens)
        for note, target in records
    ]
    train_examples, val_examples = encode(train_records), encode(val_records)
    if not train_examples:
        raise ValueError(f"expert {expert!r} has no training notes; check experts in params.yaml and the split")

    model = add_lora(base_model, params).to(device)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=params.learning_rate, weight_decay=params.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, params.warmup_steps, params.max_steps)
    pad_id = tokenizer.pad_token_id

    report = TrainingReport(expert, len(train_examples), len(val_examples), params.max_steps,
                            trainable_parameters=sum(p.numel() for p in trainable))
    batches: list[list[TokenizedExample]] = []
    started = time.perf_counter()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    for _ in tqdm(range(params.max_steps), desc=f"training {expert}", unit="step", disable=not progress):
        if not batches:
            batches = length_grouped_batches(train_examples, params.batch_size, rng)
        batch = batches.pop()
        with autocast:
            loss = target_loss(model, collate(batch, pad_id, device))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        report.loss_per_step.append(round(loss.item(), 5))
        report.tokens += sum(len(e.input_ids) for e in batch)
        report.supervised_tokens += sum(e.supervised_tokens for e in batch)
    report.seconds = round(time.perf_counter() - started, 2)
    report.tokens_per_second = round(report.tokens / report.seconds, 1) if report.seconds else 0.0
    report.val_loss = evaluate_loss(model, val_examples, params.batch_size, pad_id, device)
    if report.val_loss is not None and not math.isfinite(report.val_loss):
        raise FloatingPointError(f"expert {expert!r}: validation loss is {report.val_loss}; lower finetune.learning_rate")
    report.peak_memory_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    (output_dir / TRAINING_REPORT).write_text(json.dumps(asdict(report), indent=2))
    return report
