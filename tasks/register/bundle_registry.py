"""Register the route stage's router as the served bundle, `<prefix>-bundle`, with the router's metrics."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from tasks.params import Params


def bundle_name(params: Params) -> str:
    return f"{params.tracking.model_prefix}-bundle"


def served_budgets(params: Params, experts: list[str]) -> dict[str, int]:
    """Prompt cuts as the experts were trained (questions with the first task expert's), the new tokens a request gets
    by default (the most any expert was trained to write) and the most it may ask for."""
    from tasks.route.requests import feature_settings

    settings = feature_settings(params)
    return {"note_tokens": settings["note_tokens"], "question_tokens": settings["question_tokens"],
            "max_new_tokens": max(params.finetune.for_expert(e).max_target_tokens for e in experts),
            "max_new_tokens_limit": params.serve.max_new_tokens_limit}


def _flat_metrics(evaluation: dict) -> dict[str, float]:
    metrics = {f"layer_val_accuracy_{layer}": score
               for layer, score in ((evaluation.get("layer_selection") or {}).get("val_accuracy") or {}).items()}
    for kind, report in evaluation.get("routing", {}).items():
        metrics[f"routing_accuracy_{kind}"] = report["accuracy"]
        metrics[f"utilisation_entropy_bits_{kind}"] = report["utilisation"]["entropy_bits"]
        metrics[f"fallback_share_{kind}"] = report["utilisation"]["fallback_share"]
    for row in evaluation.get("downstream", []):
        key = row["system"].replace(" ", "_").replace("-", "_")
        metrics[f"target_loss_{key}"] = row["target_loss"]
        if "rouge_l" in row:
            metrics[f"rouge_l_{key}"] = row["rouge_l"]
    for composed in evaluation.get("composed", []):
        for row in composed.get("held_out", []):
            metrics[f"composed_{composed['expert']}_target_loss_{row['system'].replace(' ', '_')}"] = row["target_loss"]
    return metrics


def register_bundle(root: Path, router_dir: Path, adapter_dirs: dict[str, Path], params: Params, base_model_location: str,
                    evaluation: dict, plots: list[Path], versions: dict[str, str], expert_versions: dict[str, str]) -> dict:
    """One MLflow run for the router: settings, training curve, routing and downstream metrics, plots,
    and the served bundle (tasks/serve/bundle.py: code, base model, router, every expert, safety
    thresholds, budgets), registered as `<prefix>-bundle` and tagged with the registered versions of the
    experts it was trained with."""
    from tasks.serve.bundle import log_bundle_model

    experts = evaluation["experts"]
    name = bundle_name(params)
    route = params.route
    with mlflow.start_run(run_name="router", nested=mlflow.active_run() is not None) as run:
        mlflow.set_tags({"medlora.stage": "route", "medlora.strategy": route.strategy, **versions})
        mlflow.log_params({"strategy": route.strategy, "experts": ",".join(experts), "layer": (evaluation.get("layer_selection") or {}).get("chosen", route.layer),
                           "layer_candidates": str(route.layer),
                           "lexical_buckets": route.lexical_buckets, "top_k": route.top_k, "min_confidence": route.min_confidence,
                           "epochs": route.epochs, "batch_size": route.batch_size, "learning_rate": route.learning_rate,
                           "hidden_l2": route.hidden_l2, "lexical_l2": route.lexical_l2, "base_model_setting": params.base_model,
                           "seed": params.seed, **{f"reinforce_{k}": v for k, v in route.reinforce.model_dump().items()},
                           **{f"contrastive_{k}": v for k, v in route.contrastive.model_dump().items()},
                           **{f"expert_version_{e}": v for e, v in expert_versions.items()}})
        training = evaluation.get("training", {})
        for epoch, loss in enumerate(training.get("loss_per_epoch", []), start=1):
            mlflow.log_metric("router_train_loss", loss, step=epoch)
        for epoch, accuracy in enumerate(training.get("val_accuracy_per_epoch", []), start=1):
            mlflow.log_metric("router_val_accuracy", accuracy, step=epoch)
        mlflow.log_metrics(_flat_metrics(evaluation))
        mlflow.log_dict(evaluation, "evaluation.json")
        for plot in plots:
            mlflow.log_artifact(str(plot), artifact_path="plots")
        served = list(experts) + [e for e in adapter_dirs if e not in experts]
        budgets = served_budgets(params, served)
        info = log_bundle_model(root, router_dir, {e: adapter_dirs[e] for e in served}, params.base_model, base_model_location,
                                evaluation["base_fingerprint"], budgets, params.finetune.generation_batch_size,
                                params.finetune.precision, evaluation["safety"], params.serve.base_artifact_max_mb, name)
    client = MlflowClient()
    version = str(info.registered_model_version)
    for key, value in {**versions, "strategy": route.strategy, "experts": json.dumps(expert_versions)}.items():
        client.set_model_version_tag(name, version, key, value)
    return {"model": name, "version": version, "run_id": run.info.run_id}
