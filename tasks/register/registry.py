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
            "device": report["device"], "threads": report["threads"],
            **{f"train_data_{k}": v for k, v in report.get("data_provenance", {}).items()}}


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
