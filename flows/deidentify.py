"""Stage: replace PHI with consistent surrogates; nothing downstream of data/deid/ holds PHI."""

import os
from pathlib import Path

import pandas as pd
from prefect import flow, task

from flows.stage_runtime import stage_run
from tasks.deidentify.engine import deidentify_notes, require_token_model
from tasks.deidentify.surrogates import load_or_create_key
from tasks.layout import DEID_DIR, INGESTED_DIR


@task(persist_result=False)
def deidentify(root: Path, params) -> dict:
    if params.deidentify.use_model:
        require_token_model(root / params.deidentify.model.path)
    notes = pd.read_parquet(root / INGESTED_DIR / "notes.parquet")
    key = load_or_create_key(root, os.environ.get("MEDLORA_DEID_KEY"))
    deidentified, stats = deidentify_notes(notes, params.deidentify, key, root)
    (root / DEID_DIR).mkdir(parents=True, exist_ok=True)
    deidentified.to_parquet(root / DEID_DIR / "notes.parquet", index=False)
    return stats


@flow(name="deidentify", persist_result=False)
def deidentify_flow(root: str = "."):
    with stage_run("deidentify", root) as (root, params, report):
        stats = deidentify(root, params)
        report.records_in = report.records_out = stats.pop("notes")
        report.metrics = stats
    return report
