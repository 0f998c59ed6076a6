"""Stage: train the PHI token model that the de-identify stage uses."""

from pathlib import Path

from prefect import flow, task

from flows.stage_runtime import stage_run
from tasks.deidentify.training import train_and_save


@task(persist_result=False)
def train_deid(root: Path, params) -> dict:
    return train_and_save(params.deidentify, root)


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
