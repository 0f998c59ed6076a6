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
from tasks.params import Params  # noqa: E402
from tasks.register.expert_model import ExpertAdapterModel  # noqa: E402


def registered_name(params: Params, expert: str) -> str:
    return f"{params.tracking.model_prefix}-expert-{expert}"


def _loss_curve(losses: list[float], expert: str, path: Path) -> Path:
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot(range(1, len(losses) + 1), losses, marker="o")
    axis.set(title=f"training loss: {expert}", xlabel="optimizer step", ylabel="target-token loss")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def register_expert(adapter_dir: Path, params: Params, base_model_location: str, versions: dict[str, str]) -> dict:
    """One MLflow run for one adapter: params, loss per step, metrics, plot, model; then a version."""
    report = json.loads((adapter_dir / TRAINING_REPORT).read_text())
    expert = report["expert"]
    name = registered_name(params, expert)
    finetune = params.finetune
    with mlflow.start_run(run_name=f"expert-{expert}", nested=mlflow.active_run() is not None) as run:
        mlflow.set_tags({"medlora.stage": "finetune", "medlora.expert": expert, **versions})
        mlflow.log_params({
            "expert": expert, "base_model_setting": params.base_model, "specialties": "; ".join(params.experts[expert]),
            "lora_r": finetune.lora.r, "lora_alpha": finetune.lora.alpha, "lora_dropout": finetune.lora.dropout,
            "target_modules": ",".join(finetune.lora.target_modules), "learning_rate": finetune.learning_rate,
            "batch_size": finetune.batch_size, "max_steps": finetune.max_steps,
            "max_source_tokens": finetune.max_source_tokens, "train_examples": report["train_examples"],
            "val_examples": report["val_examples"],
        })
        for step, loss in enumerate(report["loss_per_step"], start=1):
            mlflow.log_metric("train_loss", loss, step=step)
        metrics = {k: report[k] for k in ("tokens_per_second", "seconds", "peak_memory_mb", "tokens", "supervised_tokens")}
        if report["val_loss"] is not None:
            metrics["val_loss"] = report["val_loss"]
        mlflow.log_metrics(metrics)
        with tempfile.TemporaryDirectory() as scratch:
            mlflow.log_artifact(str(_loss_curve(report["loss_per_step"], expert, Path(scratch) / "loss_curve.png")))
        # The PEFT adapter travels inside the pyfunc model (model/artifacts/adapter), loadable as is.
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=ExpertAdapterModel(),
            artifacts={"adapter": str(adapter_dir)},
            model_config={"base_model": base_model_location, "max_source_tokens": finetune.max_source_tokens},
            pip_requirements=["torch", "transformers", "peft", "pandas"],
            registered_model_name=name,
        )
    client = MlflowClient()
    version = str(info.registered_model_version)
    for key, value in versions.items():
        client.set_model_version_tag(name, version, key, value)
    client.set_model_version_tag(name, version, "expert", expert)
    return {"expert": expert, "model": name, "version": version, "run_id": run.info.run_id, "val_loss": report["val_loss"]}
