"""Stage: train the PHI token model that the de-identify stage uses."""

from pathlib import Path

from prefect import flow, task

from flows.stage_runtime import stage_run
from tasks.deidentify.engine import PhiDetector
from tasks.deidentify.training import train_token_model


@task(persist_result=False)
def train_deid(root: Path, params) -> dict:
    rules_only = PhiDetector(params.deidentify.model_copy(update={"use_model": False}))
    model, report = train_token_model(params.deidentify.model, root, rules_only)
    model.save(root / params.deidentify.model.path)
    return report


@flow(name="train_deid", persist_result=False)
def train_deid_flow(root: str = "."):
    with stage_run("train_deid", root) as (root, params, report):
        # Training reads annotated corpora (the PHI zone) but writes only weights and word lists
        # of clinical vocabulary; its report holds counts, never text.
        stats = train_deid(root, params)
        report.records_in = stats.pop("train_notes")
        report.records_out = report.records_in
        report.metrics = {k: v for k, v in stats.items() if isinstance(v, (int, float))}
    return report
