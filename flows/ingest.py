"""Stage: read raw notes, map columns, quarantine bad rows (all inside the PHI zone, data/raw/)."""

from pathlib import Path

from prefect import flow, get_run_logger, task

from flows.stage_runtime import stage_run
from tasks.ingest.read_notes import ingest_notes
from tasks.layout import GX_DIR, INGESTED_DIR
from tasks.validate.suite import ValidationGateError, run_raw_suite


@task(persist_result=False)
def ingest(root: Path, params) -> dict:
    result = ingest_notes(root / params.input.path, params.input.format, params.input.columns, params.expert_for_specialty())
    out = root / INGESTED_DIR
    out.mkdir(parents=True, exist_ok=True)
    result.kept.to_parquet(out / "notes.parquet", index=False)
    result.quarantined.to_parquet(out / "quarantine.parquet", index=False)
    if len(result.kept):
        outcome = run_raw_suite(result.kept, sorted(params.expert_for_specialty()), root / GX_DIR)
        if not outcome.success:
            raise ValidationGateError(f"{params.input.path}: the ingested notes fail the raw-input suite: "
                                      + "; ".join(outcome.failed))
    return {**result.counts, **{f"quarantined_{k}": v for k, v in result.reasons().items()}}


@flow(name="ingest", persist_result=False)
def ingest_flow(root: str = "."):
    with stage_run("ingest", root) as (root, params, report):
        counts = ingest(root, params)
        if counts["kept"] == 0:
            raise ValueError(
                f"{params.input.path}: no record was kept ({counts}); see {INGESTED_DIR}/quarantine.parquet for reasons"
            )
        get_run_logger().info("read %d = kept %d + quarantined %d", counts["read"], counts["kept"], counts["quarantined"])
        report.records_in, report.records_out = counts["read"], counts["kept"]
        report.metrics = {k: v for k, v in counts.items() if k not in ("read", "kept")}
    return report
