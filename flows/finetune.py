"""Stage: one LoRA adapter per expert, trained on that expert's specialty group."""

from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger, task

from flows.stage_runtime import stage_run
from flows.validate import VALIDATED_DIR
from tasks.finetune.base_model import load_base, pick_device
from tasks.finetune.train import train_expert_adapter

ADAPTERS_DIR = Path("models/adapters")


@task(persist_result=False)
def train_expert(root: Path, params, expert: str) -> dict:
    splits = {s: pd.read_parquet(root / VALIDATED_DIR / f"{s}.parquet") for s in ("train", "val")}
    records = {s: list(zip(f.loc[f.expert == expert, "text"], f.loc[f.expert == expert, "target"])) for s, f in splits.items()}
    device = pick_device(params.finetune.device)
    # A fresh base per expert: get_peft_model injects LoRA layers in place (reloading takes < 1 s).
    tokenizer, base = load_base(params.base_model, root, device)
    report = train_expert_adapter(expert, records["train"], records["val"], tokenizer, base, params.finetune,
                                  root / ADAPTERS_DIR / expert, params.seed, device)
    return {"expert": expert, "val_loss": report.val_loss, "tokens_per_second": report.tokens_per_second,
            "train_examples": report.train_examples}


@flow(name="finetune", persist_result=False)
def finetune_flow(root: str = "."):
    with stage_run("finetune", root) as (root, params, report):
        results = [train_expert(root, params, expert) for expert in params.experts]
        logger = get_run_logger()
        for r in results:
            logger.info("expert %s: val loss %s, %s tokens/s", r["expert"], r["val_loss"], r["tokens_per_second"])
        report.records_in = sum(r["train_examples"] for r in results)
        report.records_out = len(results)
        losses = [r["val_loss"] for r in results if r["val_loss"] is not None]
        report.metrics = {"experts": len(results), "mean_val_loss": round(sum(losses) / len(losses), 4) if losses else "n/a",
                          "tokens_per_second": round(sum(r["tokens_per_second"] for r in results) / len(results), 1)}
    return report
