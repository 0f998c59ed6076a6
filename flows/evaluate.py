"""Stage: score every candidate beside the base model and its champion, log it all to MLflow, put a sample
of each candidate's outputs (flagged first) in the review queue, and, as configured, wait for the reviews
and run the promotion gate."""

import json
import time
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import FlowRunContext
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput

from flows.promote import promote_flow
from flows.stage_runtime import stage_run
from tasks.evaluate.evaluation import held_out_items
from tasks.finetune.inference import InferenceCache
from tasks.evaluate.stage import (EVALUATION_DIR, EVALUATION_FILE, base_engine_factory, candidate_refs,
                                  evaluate_candidates, queue_items)
from tasks.layout import VALIDATED_DIR
from tasks.params import MULTITASK_EXPERT
from tasks.promote.gate import CHAMPION, alias_version
from tasks.register.registry import registered_name
from tasks.review.project import open_store
from tasks.tracking import configure_tracking


class ReviewOutcome(RunInput):
    """What resumes a run paused for review: the queue reports itself complete, or a person resumes it."""

    queue_complete: bool = True


def flat_metrics(evaluation: dict) -> dict[str, float]:
    metrics = {f"base/{k}": v for k, v in evaluation["base"]["metrics"].items() if isinstance(v, (int, float))}
    for candidate in evaluation["candidates"]:
        for k, v in candidate.get("metrics", {}).items():
            metrics[f"{candidate['key']}/{k}"] = v
        for k, v in candidate.get("safety", {}).items():
            if isinstance(v, (int, float)):
                metrics[f"{candidate['key']}/{k}"] = v
    return metrics


def candidate_rows(evaluation: dict) -> list[dict]:
    rows = []
    for candidate in evaluation["candidates"]:
        metrics, base = candidate.get("metrics", {}), candidate.get("base_metrics", {})
        champion = (candidate.get("champion") or {}).get("metrics", {})
        multitask = candidate.get("multitask_metrics", {})
        row = {"candidate": candidate["key"], "scope": candidate["scope"], "flagged": candidate.get("flagged", 0)}
        for metric in ("perplexity", "rouge_l", "accuracy", "macro_f1", "ece", "critical_error_rate", "latency_ms"):
            if metric in metrics:
                row[metric] = metrics[metric]
                row[f"{metric} (base)"] = base.get(metric)
                row[f"{metric} (multi-task)"] = multitask.get(metric)
                row[f"{metric} (champion)"] = champion.get(metric)
        rows.append(row)
    return rows


@task(persist_result=False)
def evaluate(root, params) -> tuple[dict, list]:
    logger = get_run_logger()
    configure_tracking(params, root)
    client = MlflowClient()
    refs = candidate_refs(client, params.tracking.model_prefix)
    # the candidates' champions, and the multi-task adapter's (specialty experts are compared with it)
    models = {r.model for r in refs} | {registered_name(params, MULTITASK_EXPERT)}
    champions = {name: v for name in sorted(models) if (v := alias_version(client, name, CHAMPION))}
    items = held_out_items(params, root, pd.read_parquet(root / VALIDATED_DIR / "test.parquet"))
    logger.info("%s candidates on %s held-out requests: %s", len(refs), len(items), ", ".join(r.key for r in refs))
    cache = InferenceCache.for_project(root)
    evaluation, results = evaluate_candidates(params, items, refs, base_engine_factory(params, root), champions, cache=cache)
    logger.info("inference cache: %s results re-used, %s computed", cache.hits, cache.misses)
    evaluation["inference_cache"] = {"reused": cache.hits, "computed": cache.misses}
    return evaluation, queue_items(refs, results, params.review.items_per_candidate, params.seed)


@task(persist_result=False)
def log_evaluation(evaluation: dict) -> str:
    """One MLflow run: every candidate's metrics, the tables (candidates, safety, robustness) and the JSON."""
    with mlflow.start_run(run_name="evaluation") as run:
        mlflow.set_tags({"medlora.stage": "evaluate"})
        mlflow.log_params({"base_model": evaluation["base_model"], "requests": evaluation["requests"],
                           "candidates": ",".join(c["key"] for c in evaluation["candidates"])[:6000]})
        mlflow.log_metrics(flat_metrics(evaluation))
        mlflow.log_table(pd.DataFrame(candidate_rows(evaluation)), "candidates.json")
        safety = [{"system": c["key"], **c["safety"]} for c in evaluation["candidates"] if c.get("safety")]
        if evaluation["base"]["safety"]:
            safety.append({"system": "base model", **evaluation["base"]["safety"]})
        if safety:
            mlflow.log_table(pd.DataFrame(safety), "safety_auroc.json")
        robustness = [{"candidate": c["key"], **row} for c in evaluation["candidates"] for row in c.get("robustness", [])]
        if robustness:
            mlflow.log_table(pd.DataFrame(robustness), "robustness.json")
        mlflow.log_dict(evaluation, "evaluation.json")
    client = MlflowClient()
    for candidate in evaluation["candidates"]:
        client.set_model_version_tag(candidate["model"], candidate["version"], "evaluation_run", run.info.run_id)
    return run.info.run_id


def wait_for_reviews(root, params, batch: str) -> None:
    """`pause`: Prefect pauses this run for input (resumed by the last review decision or from the UI);
    `poll`: this run checks the queue until nothing is pending. Either way, the gate then decides."""
    logger = get_run_logger()
    root = Path(root)
    settings = params.review
    store = open_store(params, root)
    if settings.wait == "pause":
        run_id = str(FlowRunContext.get().flow_run.id)
        store.register_waiting_run(batch, run_id)
        logger.info("paused until review batch %s is complete (or a person resumes run %s)", batch, run_id)
        pause_flow_run(wait_for_input=ReviewOutcome, timeout=settings.wait_timeout_s, poll_interval=settings.poll_interval_s,
                       key=f"review-{batch}")
        store.clear_waiting_run(run_id)
    else:
        deadline = time.monotonic() + settings.wait_timeout_s
        while store.items(batch=batch, status="pending"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"review batch {batch} still has pending items after {settings.wait_timeout_s} s")
            time.sleep(settings.poll_interval_s)
    promote_flow(root=str(root), batch=batch)


@flow(name="evaluate", persist_result=False)
def evaluate_flow(root: str = "."):
    with stage_run("evaluate", root) as (root, params, report):
        evaluation, queue = evaluate(root, params)
        batch = log_evaluation(evaluation)
        evaluation["batch"] = batch
        (root / EVALUATION_DIR).mkdir(parents=True, exist_ok=True)
        (root / EVALUATION_DIR / EVALUATION_FILE).write_text(json.dumps(evaluation, indent=2))
        store = open_store(params, root)
        store.enqueue(batch, queue)
        rows = candidate_rows(evaluation)
        create_table_artifact(key="candidates", table=rows or [{"candidate": "(none)"}],
                              description="Every candidate on its held-out requests, beside the base model and its champion")
        create_markdown_artifact(key="review-queue", description="The review queue of this evaluation", markdown=(
            f"Review batch `{batch}`: {len(queue)} outputs of {len(rows)} candidates wait for review "
            f"(flagged first).\n\nReview with `medlora review list` / `medlora review serve`, then run `medlora promote`."))
        report.records_in = evaluation["requests"]
        report.records_out = len(queue)
        report.metrics = {"candidates": len(rows), "review_items": len(queue), "review_batch": batch,
                          "flagged": sum(r["flagged"] for r in rows)}
    if params.review.wait != "none" and queue:
        wait_for_reviews(root, params, batch)
    return report
