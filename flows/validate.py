"""Stage: the GX gate over de-identified notes, then a patient-grouped train/val/test split."""

from pathlib import Path

import pandas as pd
from prefect import flow, task

from flows.deidentify import DEID_DIR
from flows.stage_runtime import stage_run
from tasks.validate.quarantine import quarantine_failing_rows
from tasks.validate.split import patients_crossing_splits, split_by_patient
from tasks.validate.suite import ValidationGateError, gate_failure_message, run_suite

VALIDATED_DIR = Path("data/validated")
QUARANTINE_DIR = Path("data/quarantine")


@task(persist_result=False)
def validate_and_split(root: Path, params) -> dict:
    source = root / DEID_DIR / "notes.parquet"
    read = pd.read_parquet(source)
    notes, quarantined = quarantine_failing_rows(read, params.validate_)
    (root / QUARANTINE_DIR).mkdir(parents=True, exist_ok=True)
    quarantined.to_parquet(root / QUARANTINE_DIR / "validate.parquet", index=False)
    if len(notes) == 0:
        raise ValidationGateError(f"{source.relative_to(root)}: every row failed a row-level expectation; "
                                  f"see {QUARANTINE_DIR}/validate.parquet")
    outcome = run_suite(notes, params.validate_, sorted(params.experts), root / "gx")
    if not outcome.success:
        raise ValidationGateError(gate_failure_message(outcome, notes, str(source.relative_to(root))))
    splits = split_by_patient(notes, params.validate_.split, params.seed)
    crossing = patients_crossing_splits(splits)
    if crossing:
        raise ValidationGateError(f"{len(crossing)} patients fall in more than one split; the split is broken")
    out = root / VALIDATED_DIR
    out.mkdir(parents=True, exist_ok=True)
    for name, frame in splits.items():
        frame.to_parquet(out / f"{name}.parquet", index=False)
    return {"notes": len(read), "quarantined": len(quarantined), "expectations": outcome.evaluated,
            **{f"{name}_notes": len(frame) for name, frame in splits.items()}}


@flow(name="validate", persist_result=False)
def validate_flow(root: str = "."):
    with stage_run("validate", root) as (root, params, report):
        summary = validate_and_split(root, params)
        report.records_in = summary.pop("notes")
        report.records_out = sum(summary[f"{s}_notes"] for s in ("train", "val", "test"))
        report.metrics = summary
    return report
