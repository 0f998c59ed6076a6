"""MLflow tracking set-up shared by the stages that log runs."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Param

from tasks.params import PARAMS_FILE, Params, yaml_line


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


def override_params(edit) -> dict[str, str]:
    """MLflow params for a `medlora run --preset/--set` (a tasks.params.ParamsEdit): `preset`, `override.<key>`."""
    if edit is None:
        return {}
    recorded = {"preset": edit.preset} if edit.preset else {}
    return recorded | {f"override.{key}": yaml_line(value)[:6000] for key, value in edit.assignments.items()}


@contextmanager
def pipeline_run(params: Params, root: Path, edit=None):
    """One MLflow run per `medlora run`, whatever stages DVC re-uses: the preset and each --set override as
    params, the params.yaml the run used as an artifact, and FINISHED or FAILED as its status.

    MlflowClient, not mlflow.start_run: the stages start their own runs, and an active run here would
    become their parent (or an error) in every thread that sees it."""
    configure_tracking(params, root)
    client = MlflowClient()
    experiment = client.get_experiment_by_name(params.tracking.experiment)
    run_id = client.create_run(experiment.experiment_id, run_name="pipeline",
                               tags={"medlora.stage": "pipeline"}).info.run_id
    client.log_batch(run_id, params=[Param(key, value) for key, value in override_params(edit).items()])
    client.log_text(run_id, (root / PARAMS_FILE).read_text(), PARAMS_FILE)
    try:
        yield run_id
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
