"""MLflow tracking set-up shared by the stages that log runs."""

from __future__ import annotations

from pathlib import Path

import mlflow

from tasks.params import Params


def configure_tracking(params: Params, root: Path) -> str:
    """Point MLflow at the SQLite store and make sure the experiment keeps artifacts in mlartifacts/."""
    uri = params.tracking.mlflow_uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{(root / uri.removeprefix('sqlite:///')).resolve()}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if mlflow.get_experiment_by_name(params.tracking.experiment) is None:
        artifacts = (root / params.tracking.artifact_dir).resolve()
        artifacts.mkdir(parents=True, exist_ok=True)
        mlflow.create_experiment(params.tracking.experiment, artifact_location=artifacts.as_uri())
    mlflow.set_experiment(params.tracking.experiment)
    return uri
