"""MLflow tracking set-up shared by the stages that log runs: the project's SQLite store, or a tracking server
named by MLFLOW_TRACKING_URI or tracking.mlflow_uri."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Param
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

from tasks.params import PARAMS_FILE, Params, yaml_line


# MLflow writes these variables itself whenever a URI is set (so that subprocesses inherit it): read later in
# the same process they would name the last project's store, not the user's choice. What counts is the
# environment medlora was started with.
TRACKING_ENVIRONMENT = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
STARTED_WITH = {name: os.environ.get(name) or None for name in TRACKING_ENVIRONMENT}
SERVER_SCHEMES = ("http", "https", "databricks")  # stores behind a server, which decides where artifacts go


def tracking_uris(params: Params, root: Path) -> tuple[str, str]:
    """(tracking, registry) URIs: MLFLOW_TRACKING_URI if medlora was started with it, else tracking.mlflow_uri
    (a relative SQLite path meaning the project root); MLFLOW_REGISTRY_URI, else the tracking URI."""
    tracking = STARTED_WITH["MLFLOW_TRACKING_URI"] or _in_project(params.tracking.mlflow_uri, root)
    return tracking, STARTED_WITH["MLFLOW_REGISTRY_URI"] or tracking


def _in_project(uri: str, root: Path) -> str:
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{(root / uri.removeprefix('sqlite:///')).resolve()}"
    return uri


def is_tracking_server(uri: str) -> bool:
    return urlsplit(uri).scheme in SERVER_SCHEMES


def configure_tracking(params: Params, root: Path) -> str:
    """Point MLflow at the tracking store and registry (tracking_uris) and select the experiment. A new
    experiment in a local store (SQLite, PostgreSQL, a directory) keeps its artifacts in tracking.artifact_dir;
    on a tracking server, where the server was told to (`mlflow server --artifacts-destination`)."""
    uri, registry = tracking_uris(params, root)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(registry)
    name = params.tracking.experiment
    if mlflow.get_experiment_by_name(name) is None:
        location = None
        if not is_tracking_server(uri):
            artifacts = (root / params.tracking.artifact_dir).resolve()
            artifacts.mkdir(parents=True, exist_ok=True)
            location = artifacts.as_uri()
        try:
            mlflow.create_experiment(name, artifact_location=location)
        except MlflowException as error:  # another run (a teammate's, on a shared server) created it first
            if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise
    mlflow.set_experiment(name)
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
