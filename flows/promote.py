"""Promotion: the gate decides for each candidate of an evaluation, the aliases move, and the decision with
its reasons goes to MLflow (a table), to the Prefect run (artifacts) and to the review audit log. A candidate
kept out by drift leaves the run in the state `Attention`, with the reasons as its message.
Rollback gives `champion` back to the version aliased `previous`."""

import json
import os
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.states import Completed

from tasks.evaluate.stage import EVALUATION_DIR, EVALUATION_FILE
from tasks.drift.reference import champion_metrics_at_promotion, champion_reference
from tasks.drift.summary import read_summary
from tasks.params import load_params
from tasks.promote.gate import (CHAMPION, PREVIOUS, Decision, alias_version, data_drift_check, decide, decision_table,
                                drift_failures, metric_drift_checks, promote, rollback)
from tasks.review.project import open_store
from tasks.tracking import configure_tracking


def actor() -> str:
    return os.environ.get("MEDLORA_REVIEWER") or os.environ.get("USER") or "medlora"


def read_evaluation(root: Path) -> dict:
    path = root / EVALUATION_DIR / EVALUATION_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the evaluate stage (medlora run) before promoting")
    return json.loads(path.read_text())


def gate_decisions(root: Path, params, evaluation: dict, batch: str | None = None) -> list[Decision]:
    """The gate's decision for every candidate of the evaluation, against its review batch."""
    batch = batch or evaluation["batch"]
    if batch != evaluation["batch"]:
        raise ValueError(f"review batch {batch} is not the last evaluation's ({evaluation['batch']}); "
                         "its candidates' metrics are gone: promote the last batch or evaluate again")
    reviews = open_store(params, root).summary(batch)
    client = MlflowClient()
    reference, _ = champion_reference(client, params.tracking.model_prefix)
    block = params.drift.block_promotion
    data_drift = data_drift_check(read_summary(root), reference.data_version if reference else None, block)
    decisions = []
    for candidate in evaluation["candidates"]:
        champion = alias_version(client, candidate["model"], CHAMPION)
        drift = [data_drift]
        if champion is not None:
            at_promotion, _ = champion_metrics_at_promotion(client, candidate["model"], champion)
            drift += metric_drift_checks(candidate.get("metrics", {}), at_promotion, champion, params.promote.metrics,
                                         params.drift.max_metric_drop, block)
        decisions.append(decide(candidate, reviews.get(candidate["key"]), params.promote, champion, drift))
    return decisions


@flow(name="promote", persist_result=False)
def promote_flow(root: str = ".", batch: str | None = None):
    logger = get_run_logger()
    root = Path(root).resolve()
    params = load_params(root)
    configure_tracking(params, root)
    evaluation = read_evaluation(root)
    decisions = gate_decisions(root, params, evaluation, batch)
    client = MlflowClient()
    moved = [promote(client, d) for d in decisions]
    rows = [d.as_row() | {"champion": m["champion"], "previous": m["previous"]} for d, m in zip(decisions, moved)]
    for row in rows:
        logger.info("%s v%s: %s (%s)", row["model"], row["version"], row["decision"], row["reasons"])
    drifted = drift_failures(decisions)
    with mlflow.start_run(run_name="promotion"):
        mlflow.set_tags({"medlora.stage": "promote", "medlora.review_batch": evaluation["batch"],
                         "medlora.drift_blocked": str(bool(drifted)).lower()})
        mlflow.log_metrics({"promoted": sum(d.promote for d in decisions), "kept_out": sum(not d.promote for d in decisions)})
        mlflow.log_table(pd.DataFrame(decision_table(decisions)), "promotion_decision.json")
        mlflow.log_dict({"decisions": rows}, "promotion.json")
    store = open_store(params, root)
    for row in rows:
        store.log(actor(), "promote" if row["decision"] == "promote" else "keep_out",
                  detail={"model": row["model"], "version": row["version"], "reasons": row["reasons"]})
    create_table_artifact(key="promotion", table=rows or [{"model": "(no candidates)"}],
                          description="The promotion gate's decision per candidate, with its reasons")
    create_markdown_artifact(key="promotion-summary", markdown="\n".join(
        [f"- **{r['model']} v{r['version']}**: {r['decision']}. {r['reasons']}" for r in rows] or ["No candidates."]))
    if drifted:
        message = "drift kept candidates out: " + "; ".join(drifted)
        logger.warning(message)
        return Completed(name="Attention", message=message[:5000], data=rows)
    return rows


@flow(name="rollback", persist_result=False)
def rollback_flow(root: str = ".", models: list[str] | None = None) -> list[dict]:
    """Roll back the named models, or every model of the project that has a `previous` version."""
    root = Path(root).resolve()
    params = load_params(root)
    configure_tracking(params, root)
    client = MlflowClient()
    if not models:
        prefix = params.tracking.model_prefix
        models = [m.name for m in client.search_registered_models(filter_string=f"name LIKE '{prefix}-%'")
                  if alias_version(client, m.name, PREVIOUS)]
        if not models:
            raise ValueError(f"no model registered under {prefix!r} has a version aliased {PREVIOUS!r}: nothing to roll back")
    rows = [rollback(client, model) for model in models]
    with mlflow.start_run(run_name="rollback"):
        mlflow.set_tags({"medlora.stage": "promote"})
        mlflow.log_table(pd.DataFrame(rows), "rollback.json")
    store = open_store(params, root)
    for row in rows:
        store.log(actor(), "rollback", detail=row)
    create_table_artifact(key="rollback", table=rows, description="Champions restored to their previous versions")
    return rows
