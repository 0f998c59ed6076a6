"""Stage: drift of the incoming notes against the champion's training notes (Evidently, on derived features of
the de-identified, validated notes), reported to MLflow (HTML and table), to the Prefect run (artifacts) and to
reports/drift/, which the promotion gate reads. Drift at or beyond drift.drift_share leaves this run in the
state `Attention` and blocks promotion. The `drift check` deployment runs this flow on its own."""

import tempfile
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.states import Completed

from flows.stage_runtime import stage_run
from tasks.drift.features import feature_table
from tasks.drift.reference import (DRIFT_STAGE, RUN_DATA_VERSION_TAG, STAGE_TAG, TRAIN_FEATURES, champion_reference,
                                   reference_features)
from tasks.drift.report import compare, save_html
from tasks.drift.summary import ATTENTION, DRIFT_DIR, HTML_FILE, SUMMARY_FILE, DriftSummary
from tasks.layout import VALIDATED_DIR
from tasks.tracking import configure_tracking
from tasks.versioning import dvc_data_version

SPLITS = ("train", "val", "test")


def validated_features(root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(features of every validated note: the incoming notes, features of the training split)."""
    tables = {}
    for split in SPLITS:
        path = root / VALIDATED_DIR / f"{split}.parquet"
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: run the validate stage first (medlora stage validate)")
        tables[split] = feature_table(pd.read_parquet(path, columns=["text", "specialty"]))
    return pd.concat(tables.values(), ignore_index=True), tables["train"]


def log_drift_run(summary: DriftSummary, train: pd.DataFrame, html: Path) -> str:
    """One MLflow run: the verdict as tags and metrics, the HTML report, the per-column table, and the training
    split's features, which later runs compare against once a model trained on them is champion."""
    with mlflow.start_run(run_name="drift", nested=mlflow.active_run() is not None) as run:
        mlflow.set_tags({STAGE_TAG: DRIFT_STAGE, RUN_DATA_VERSION_TAG: summary.data_version,
                         "medlora.drift": summary.status, "medlora.drift_blocking": str(summary.blocking).lower()})
        if summary.reference is not None:
            mlflow.log_params({"reference_model": summary.reference.model, "reference_version": summary.reference.version,
                               "reference_data_version": summary.reference.data_version})
        metrics = {"current_notes": summary.current_notes, "drifted_columns": len(summary.drifted_columns)}
        if summary.drift_share is not None:
            metrics["drift_share"] = summary.drift_share
        metrics |= {f"drift_score_{c.column}": c.score for c in summary.columns}
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(html), artifact_path="drift")
        if summary.columns:
            mlflow.log_table(pd.DataFrame([vars(c) for c in summary.columns]), "drift_columns.json")
        mlflow.log_dict(summary.as_dict(), "drift_summary.json")
        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch) / Path(TRAIN_FEATURES).name
            train.to_parquet(path, index=False)
            mlflow.log_artifact(str(path), artifact_path=str(Path(TRAIN_FEATURES).parent))
    return run.info.run_id


@task(persist_result=False)
def measure_drift(root: Path, params) -> DriftSummary:
    configure_tracking(params, root)
    current, train = validated_features(root)
    client = MlflowClient()
    reference, why = champion_reference(client, params.tracking.model_prefix)
    features = None
    if reference is not None:
        features, why = reference_features(client, reference)
    summary, snapshot = compare(current, features, reference, params.drift,
                                dvc_data_version(root, "validate", str(VALIDATED_DIR)), why)
    html = save_html(snapshot, root / DRIFT_DIR / HTML_FILE)
    summary.mlflow_run_id = log_drift_run(summary, train, html)
    summary.write(root)
    return summary


def publish(summary: DriftSummary, root: Path) -> None:
    rows = [{"column": c.column, "drifted": "yes" if c.drifted else "no", "method": c.method,
             "score": f"{c.score:.4g}", "threshold": f"{c.threshold:g}"} for c in summary.columns]
    create_table_artifact(key="drift", table=rows or [{"column": "(none)", "drifted": summary.status}],
                          description=f"Drift per feature column: {summary.reason}")
    verdict = "**blocks promotion**" if summary.blocking else "does not block promotion"
    create_markdown_artifact(key="drift-summary", description="The drift check's verdict", markdown=(
        f"### Drift: {summary.status} ({verdict})\n\n{summary.reason}\n\n"
        f"- report: `{root / DRIFT_DIR / HTML_FILE}` (and the MLflow run `{summary.mlflow_run_id}`, artifact `drift/{HTML_FILE}`)\n"
        f"- summary the gate reads: `{root / DRIFT_DIR / SUMMARY_FILE}`\n"
        f"- incoming notes: {summary.current_notes}; data version {summary.data_version[:12]}"))


@flow(name="drift", persist_result=False)
def drift_flow(root: str = "."):
    with stage_run("drift", root) as (root, params, report):
        summary = measure_drift(root, params)
        publish(summary, root)
        report.records_in = summary.current_notes
        report.metrics = {"status": summary.status, "blocking": int(summary.blocking),
                          "drifted_columns": ",".join(summary.drifted_columns) or "none"}
        if summary.drift_share is not None:
            report.metrics["drift_share"] = round(summary.drift_share, 3)
    if summary.blocking:
        get_run_logger().warning("drift blocks promotion: %s", summary.reason)
        return Completed(name=ATTENTION, message=f"drift blocks promotion: {summary.reason}", data=report)
    return report
