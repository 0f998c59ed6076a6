"""Log each trained expert to MLflow and register it as a version of `<prefix>-expert-<name>`."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
from mlflow import MlflowClient  # noqa: E402

from tasks.finetune.train import TRAINING_REPORT  # noqa: E402
from tasks.params import MULTITASK_EXPERT, Params  # noqa: E402
from tasks.register.expert_model import ExpertAdapterModel  # noqa: E402


def registered_name(params: Params, expert: str) -> str:
    return f"{params.tracking.model_prefix}-expert-{expert}"


def _loss_curve(report: dict, path: Path) -> Path:
    figure, axis = plt.subplots(figsize=(6, 3.5))
    losses = report["loss_per_step"]
    axis.plot(range(1, len(losses) + 1), losses, label="training (target tokens)")
    if report["val_loss_per_eval"]:
        steps, val_losses = zip(*report["val_loss_per_eval"])
        axis.plot(steps, val_losses, marker="o", label="validation")
    axis.set(title=f"loss: {report['expert']}", xlabel="optimizer step", ylabel="loss per target token")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def expert_kind(params: Params, expert: str) -> str:
    if expert in params.finetune.task_experts:
        return "task"
    return "multitask" if expert == MULTITASK_EXPERT else "specialty"


def training_params(params: Params, expert: str, report: dict) -> dict:
    settings = params.finetune.for_expert(expert).model_dump(exclude={"task_experts", "lora"})
    lora = params.finetune.lora
    groups = list(params.experts) if expert == MULTITASK_EXPERT else [expert]
    data = (params.finetune.task_experts[expert].path if expert in params.finetune.task_experts
            else "; ".join(s for group in groups for s in params.experts[group]))
    return {**settings, "expert": expert, "kind": expert_kind(params, expert), "data": data,
            "base_model_setting": params.base_model, "seed": params.seed, "lora_r": lora.r, "lora_alpha": lora.alpha,
            "lora_dropout": lora.dropout, "target_modules": ",".join(lora.target_modules),
            "train_examples": report["train_examples"], "val_examples": report["val_examples"],
            "trainable_parameters": report["trainable_parameters"], "precision": report["precision"],
            "device": report["device"], "threads": report["threads"]}


def register_expert(adapter_dir: Path, params: Params, base_model_location: str, versions: dict[str, str]) -> dict:
    """One MLflow run for one adapter: params, loss per step, metrics, plot, model; then a version."""
    report = json.loads((adapter_dir / TRAINING_REPORT).read_text())
    expert = report["expert"]
    name = registered_name(params, expert)
    settings = params.finetune.for_expert(expert)
    with mlflow.start_run(run_name=f"expert-{expert}", nested=mlflow.active_run() is not None) as run:
        mlflow.set_tags({"medlora.stage": "finetune", "medlora.expert": expert,
                         "medlora.expert_kind": expert_kind(params, expert), **versions})
        mlflow.log_params(training_params(params, expert, report))
        for step, loss in enumerate(report["loss_per_step"], start=1):
            mlflow.log_metric("train_loss", loss, step=step)
        for step, loss in report["val_loss_per_eval"]:
            mlflow.log_metric("val_loss_at_step", loss, step=step)
        metrics = {k: report[k] for k in ("tokens_per_second", "supervised_tokens_per_second", "seconds", "peak_memory_mb",
                                          "tokens", "supervised_tokens", "steps")}
        metrics |= {"stopped_early": int(report["stopped_early"]), "resumed_from_step": report["resumed_from_step"],
                    **report["val_metrics"]}
        if report["val_loss"] is not None:
            metrics["val_loss"] = report["val_loss"]
        mlflow.log_metrics(metrics)
        with tempfile.TemporaryDirectory() as scratch:
            mlflow.log_artifact(str(_loss_curve(report, Path(scratch) / "loss_curve.png")))
        # The adapter in PEFT format, as serving engines (vLLM, LoRAX) load it.
        mlflow.log_artifacts(str(adapter_dir), artifact_path="adapter")
        # ... and inside a pyfunc model (model/artifacts/adapter) for `mlflow models serve` and `medlora predict`.
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=ExpertAdapterModel(),
            artifacts={"adapter": str(adapter_dir)},
            model_config={"base_model": base_model_location, "max_source_tokens": settings.max_source_tokens,
                          "max_new_tokens": settings.max_target_tokens, "batch_size": settings.generation_batch_size,
                          "precision": settings.precision},
            pip_requirements=["torch", "transformers", "peft", "pandas"],
            registered_model_name=name,
        )
    client = MlflowClient()
    version = str(info.registered_model_version)
    for key, value in versions.items():
        client.set_model_version_tag(name, version, key, value)
    client.set_model_version_tag(name, version, "expert", expert)
    return {"expert": expert, "model": name, "version": version, "run_id": run.info.run_id, "val_loss": report["val_loss"]}


def router_name(params: Params) -> str:
    return f"{params.tracking.model_prefix}-router"


def _flat_metrics(evaluation: dict) -> dict[str, float]:
    metrics = {}
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


def register_router(router_dir: Path, adapter_dirs: dict[str, Path], params: Params, base_model_location: str,
                    evaluation: dict, plots: list[Path], versions: dict[str, str], expert_versions: dict[str, str]) -> dict:
    """One MLflow run for the router: settings, training curve, routing and downstream metrics, plots,
    and the routed system as a pyfunc model, registered as `<prefix>-router` and tagged with the
    registered versions of the experts it was trained with."""
    from tasks.register.router_model import ADAPTER_ARTIFACT_PREFIX, RoutedExpertsModel

    experts = evaluation["experts"]
    name = router_name(params)
    route = params.route
    with mlflow.start_run(run_name="router", nested=mlflow.active_run() is not None) as run:
        mlflow.set_tags({"medlora.stage": "route", "medlora.strategy": route.strategy, **versions})
        mlflow.log_params({"strategy": route.strategy, "experts": ",".join(experts), "layer": route.layer,
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
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=RoutedExpertsModel(),
            artifacts={"router": str(router_dir),
                       **{f"{ADAPTER_ARTIFACT_PREFIX}{e}": str(adapter_dirs[e]) for e in experts}},
            model_config={"base_model": base_model_location, "max_new_tokens": params.finetune.max_target_tokens,
                          "batch_size": params.finetune.generation_batch_size,
                          "precision": params.finetune.precision},
            pip_requirements=["torch", "transformers", "peft", "pandas", "safetensors"],
            registered_model_name=name,
        )
    client = MlflowClient()
    version = str(info.registered_model_version)
    for key, value in {**versions, "strategy": route.strategy, "experts": json.dumps(expert_versions)}.items():
        client.set_model_version_tag(name, version, key, value)
    return {"model": name, "version": version, "run_id": run.info.run_id}


def register_composed_expert(adapter_dir: Path, composition: dict, params: Params, base_model_location: str,
                             versions: dict[str, str]) -> dict:
    """A composed expert (a merged mix of trained adapters) registered like a trained one, as `<prefix>-expert-<name>`."""
    expert = composition["expert"]
    name = registered_name(params, expert)
    with mlflow.start_run(run_name=f"expert-{expert}", nested=mlflow.active_run() is not None) as run:
        mlflow.set_tags({"medlora.stage": "route", "medlora.expert": expert, "medlora.expert_kind": "composed", **versions})
        mlflow.log_params({"expert": expert, "kind": "composed", "examples": composition["examples"],
                           "data": "; ".join(params.route.compose.specialties[expert]), "budget": params.route.compose.budget,
                           "l1": params.route.compose.l1, **{f"weight_{e}": w for e, w in zip(composition["experts"], composition["weights"])}})
        for step, value in enumerate(composition["objective_per_evaluation"], start=1):
            mlflow.log_metric("objective", value, step=step)
        mlflow.log_metrics({"example_loss": composition["example_loss"],
                            **{f"held_out_loss_{r['system'].replace(' ', '_')}": r["target_loss"] for r in composition["held_out"]}})
        mlflow.log_artifacts(str(adapter_dir), artifact_path="adapter")
        info = mlflow.pyfunc.log_model(
            name="model", python_model=ExpertAdapterModel(), artifacts={"adapter": str(adapter_dir)},
            model_config={"base_model": base_model_location, "max_source_tokens": params.finetune.max_source_tokens,
                          "max_new_tokens": params.finetune.max_target_tokens, "batch_size": params.finetune.generation_batch_size,
                          "precision": params.finetune.precision},
            pip_requirements=["torch", "transformers", "peft", "pandas"], registered_model_name=name)
    client = MlflowClient()
    version = str(info.registered_model_version)
    for key, value in {**versions, "expert": expert, "kind": "composed"}.items():
        client.set_model_version_tag(name, version, key, value)
    return {"expert": expert, "model": name, "version": version, "run_id": run.info.run_id}
