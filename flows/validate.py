"""Stage: the validation gate over de-identified notes, then a leakage-free train/val/test split.

Counts (read = kept + quarantined) and the duplicate report go to an MLflow run with the Data Docs
as its artifacts; the Prefect run gets a link to the Data Docs and a table of the counts.
"""

from pathlib import Path

import mlflow
import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_table_artifact

from flows.stage_runtime import stage_run
from tasks.layout import DEID_DIR, GX_DIR, QUARANTINE_DIR, VALIDATED_DIR
from tasks.tracking import configure_tracking
from tasks.validate.gate import GateResult, read_canaries, run_gate
from tasks.validate.suite import ValidationGateError


def log_gate_run(root: Path, params, result: GateResult) -> str:
    """One MLflow run per gate: counts as metrics, Data Docs as artifacts. Returns the run id."""
    configure_tracking(params, root)
    with mlflow.start_run(run_name="validate", nested=mlflow.active_run() is not None) as run:
        mlflow.set_tags({"medlora.stage": "validate", "medlora.gate": "passed" if result.passed else "failed"})
        mlflow.log_metrics({k: float(v) for k, v in result.counts.items()})
        docs = result.outcome.data_docs if result.outcome else None
        if docs is not None:
            mlflow.log_artifacts(str(docs.parent), artifact_path="data_docs")
            mlflow.set_tag("medlora.data_docs", docs.as_uri())
    return run.info.run_id


@task(persist_result=False)
def validate_and_split(root: Path, params) -> dict:
    source = root / DEID_DIR / "notes.parquet"
    read = pd.read_parquet(source)
    canaries = read_canaries(root / params.validate_.canaries_file) if params.validate_.canaries_file else []
    result = run_gate(read, params.validate_, sorted(params.note_groups()), root / GX_DIR, params.seed,
                      str(source.relative_to(root)), canaries)
    (root / QUARANTINE_DIR).mkdir(parents=True, exist_ok=True)
    result.quarantined.to_parquet(root / QUARANTINE_DIR / "validate.parquet", index=False)
    run_id = log_gate_run(root, params, result)
    create_table_artifact(key="validate-counts", table=[{"count": k, "value": v} for k, v in result.counts.items()],
                          description=f"validation gate counts (MLflow run {run_id})")
    if result.outcome and result.outcome.data_docs:
        create_link_artifact(key="validate-data-docs", link=result.outcome.data_docs.as_uri(),
                             link_text="Great Expectations Data Docs", description=f"MLflow run {run_id}")
    get_run_logger().info("read %d = kept %d + quarantined %d", result.counts["read"], result.counts["kept"],
                          result.counts["quarantined"])
    if not result.passed:
        raise ValidationGateError(result.error)
    out = root / VALIDATED_DIR
    out.mkdir(parents=True, exist_ok=True)
    for name, frame in result.splits.items():
        frame.to_parquet(out / f"{name}.parquet", index=False)
    return result.counts


@flow(name="validate", persist_result=False)
def validate_flow(root: str = "."):
    with stage_run("validate", root) as (root, params, report):
        counts = validate_and_split(root, params)
        report.records_in = counts.pop("read")
        report.records_out = sum(counts[f"{s}_notes"] for s in ("train", "val", "test"))
        report.metrics = counts
    return report
