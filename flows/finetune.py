"""Stage: one LoRA adapter per expert: each specialty group, optionally all groups together, and each task."""

from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger, task

from flows.stage_runtime import stage_run
from flows.validate import VALIDATED_DIR
from tasks.base_model import load_base, pick_device
from tasks.finetune.examples import Request, answer_of
from tasks.finetune.expert_data import expert_records
from tasks.finetune.inference import answer_probabilities, best_answer
from tasks.finetune.train import train_expert_adapter, write_report
from tasks.params import MULTITASK_EXPERT

ADAPTERS_DIR = Path("models/adapters")


@task(persist_result=False)
def train_expert(root: Path, params, expert: str, splits: dict[str, pd.DataFrame]) -> dict:
    records = expert_records(params, expert, splits, root)
    settings = params.finetune.for_expert(expert)
    device = pick_device(settings.device)
    # A fresh base per expert: get_peft_model injects LoRA layers in place (reloading takes < 1 s).
    tokenizer, base = load_base(params.base_model, root, device)
    specialise = params.finetune.specialise_from_multitask and expert in params.experts
    report, model = train_expert_adapter(expert, records["train"], records["val"], tokenizer, base, settings,
                                         root / ADAPTERS_DIR / expert, params.seed, device,
                                         checkpoint_dir=root / settings.checkpoint_dir,
                                         init_adapter=root / ADAPTERS_DIR / MULTITASK_EXPERT if specialise else None)
    if records["val"] and records["val"][0][0].is_question:
        report.val_metrics["val_accuracy"] = validation_accuracy(model, tokenizer, records["val"], settings)
        write_report(root / ADAPTERS_DIR / expert, report)
    return {"expert": expert, "val_loss": report.val_loss, "tokens_per_second": report.tokens_per_second,
            "train_examples": report.train_examples, "steps": report.steps, **report.val_metrics}


def validation_accuracy(model, tokenizer, val: list[tuple[Request, str]], settings) -> float:
    probabilities = answer_probabilities(model, tokenizer, [r for r, _ in val], settings.max_source_tokens,
                                         settings.generation_batch_size, precision=settings.precision)
    correct = sum(best_answer(p) == answer_of(target) for p, (_, target) in zip(probabilities, val))
    return round(correct / len(val), 4)


@flow(name="finetune", persist_result=False)
def finetune_flow(root: str = "."):
    with stage_run("finetune", root) as (root, params, report):
        logger = get_run_logger()
        splits = {s: pd.read_parquet(root / VALIDATED_DIR / f"{s}.parquet") for s in ("train", "val")}
        results = []
        for expert in params.trained_experts():
            task_data = params.finetune.task_experts.get(expert)
            if task_data and not (root / task_data.path).exists():
                logger.warning("task expert %s skipped: %s not found", expert, task_data.path)
                continue
            results.append(train_expert(root, params, expert, splits))
        for r in results:
            logger.info("expert %s: %s steps, val loss %s, %s tokens/s", r["expert"], r["steps"], r["val_loss"], r["tokens_per_second"])
        report.records_in = sum(r["train_examples"] for r in results)
        report.records_out = len(results)
        losses = [r["val_loss"] for r in results if r["val_loss"] is not None]
        report.metrics = {"experts": len(results), "mean_val_loss": round(sum(losses) / len(losses), 4) if losses else "n/a",
                          "tokens_per_second": round(sum(r["tokens_per_second"] for r in results) / len(results), 1)}
    return report
