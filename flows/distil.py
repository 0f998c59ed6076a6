"""Stage: distil the routed bundle (teacher) into one smaller student with no router, score student, supervised-only
student, teacher and base model side by side, and register the student as `<prefix>-student` (evaluated, reviewed,
promoted and served like every candidate)."""

import json
import shutil
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from flows.stage_runtime import stage_run
from tasks.distil.stage import REPORT_FILE, STUDENT_DIR, STUDENT_MODEL_DIR, distil
from tasks.serve.bundle import log_student_model
from tasks.tracking import configure_tracking
from tasks.versioning import dvc_data_version, git_commit


def student_name(params) -> str:
    return f"{params.tracking.model_prefix}-student"


@task(persist_result=False)
def train_students(root: Path, params) -> dict:
    logger = get_run_logger()
    if (root / STUDENT_DIR).exists():
        shutil.rmtree(root / STUDENT_DIR)
    report = distil(params, root)
    (root / STUDENT_DIR / REPORT_FILE).write_text(json.dumps(report, indent=2))
    how = report["how"]
    logger.info("student: %s; %s", how.get("student"), f"layers {how['kept_layers']} of {how['depth']}, merged: {how['merged']}"
                if "kept_layers" in how else "")
    for row in report["held_out"]:
        logger.info("%s: %s", row["system"], ", ".join(f"{k} {v}" for k, v in row.items() if k != "system"))
    cache = report["cache"]
    logger.info("teacher top-k cache: %s logits per token, %s tokens, %.1f KiB (%s re-used, %s computed)", cache["top_k"],
                cache["tokens"], cache["bytes"] / 1024, cache["reused"], cache["computed"])
    return report


def flat_metrics(report: dict) -> dict[str, float]:
    metrics = {}
    for row in report["held_out"]:
        key = row["system"].split(" (")[0].replace(" ", "_").replace("-", "_")
        metrics |= {f"{key}/{k}": v for k, v in row.items() if k != "system" and isinstance(v, (int, float))}
    for training in report["trainings"]:
        key = training["name"].replace(" ", "_").replace("-", "_")
        for step, loss in training["val_loss_per_eval"]:
            metrics[f"{key}/val_loss_at_{step}"] = loss
    metrics |= {f"student/{k}": v for k, v in report["teacher_share_kept"].items()}
    if report["speedup_over_teacher"] is not None:
        metrics["student/speedup_over_teacher"] = report["speedup_over_teacher"]
    metrics |= {"top_k_cache_bytes": report["cache"]["bytes"], "top_k_cache_tokens": report["cache"]["tokens"]}
    return metrics


@task(persist_result=False)
def register_student(root: Path, params, report: dict) -> dict:
    configure_tracking(params, root)
    name = student_name(params)
    settings = params.distil
    versions = {"git_commit": git_commit(root), "dvc_data_version": dvc_data_version(root, "validate", "data/validated")}
    with mlflow.start_run(run_name="distil", nested=mlflow.active_run() is not None) as run:
        mlflow.set_tags({"medlora.stage": "distil", **versions})
        # prefixed: the registered model's own config (batch_size, ...) is logged as params of this run too
        mlflow.log_params({**{f"distil_{k}": v for k, v in settings.model_dump().items() if k != "loss_weights"},
                           **{f"distil_loss_weight_{k}": v for k, v in settings.loss_weights.model_dump().items()},
                           "kept_layers": json.dumps(report["how"].get("kept_layers")), "merged": report["how"].get("merged"),
                           "base_model_setting": params.base_model, "seed": params.seed})
        for training in report["trainings"]:
            key = training["name"].replace(" ", "_").replace("-", "_")
            for step, loss in enumerate(training["loss_per_step"]["total"], start=1):
                mlflow.log_metric(f"{key}_train_loss", loss, step=step)
        mlflow.log_metrics(flat_metrics(report))
        mlflow.log_table(pd.DataFrame(report["held_out"]), "held_out.json")
        mlflow.log_dict(report, "distillation.json")
        info = log_student_model(root, root / STUDENT_MODEL_DIR, report["budgets"], params.finetune.generation_batch_size,
                                 params.finetune.precision, report["safety"], name)
    version = str(info.registered_model_version)
    client = MlflowClient()
    for key, value in {**versions, "kept_layers": json.dumps(report["how"].get("kept_layers")),
                       "teacher": f"{params.tracking.model_prefix}-bundle"}.items():
        client.set_model_version_tag(name, version, key, value)
    return {"model": name, "version": version, "run_id": run.info.run_id}


@flow(name="distil", persist_result=False)
def distil_flow(root: str = "."):
    with stage_run("distil", root) as (root, params, report):
        if not params.distil.enabled:
            shutil.rmtree(root / STUDENT_DIR, ignore_errors=True)
            (root / STUDENT_DIR).mkdir(parents=True)
            (root / STUDENT_DIR / REPORT_FILE).write_text(json.dumps({"skipped": "distil.enabled is false"}))
            report.metrics = {"skipped": "distil.enabled is false"}
            return report
        result = train_students(root, params)
        registered = register_student(root, params, result)
        create_table_artifact(key="distillation", table=result["held_out"],
                              description="Student, supervised-only student, teacher (routed bundle) and base model on "
                                          "held-out requests: quality, tokens/s on one batch, parameters, peak memory")
        create_table_artifact(key="registered-student", table=[registered], description="The student registered in MLflow")
        report.records_in = result["examples"]["gold"] + result["examples"]["teacher"]
        report.records_out = 1
        report.metrics = {**{f"kept_{k.removeprefix('kept_')}": v for k, v in result["teacher_share_kept"].items()},
                          "speedup_over_teacher": result["speedup_over_teacher"] or "n/a",
                          "kept_layers": len(result["how"].get("kept_layers", [])) or "n/a",
                          "top_k_cache_kib": round(result["cache"]["bytes"] / 1024, 1), "student_version": registered["version"]}
    return report
