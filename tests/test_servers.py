"""MLflow as a team runs it: a real `mlflow server` (SQLite or PostgreSQL backend store, proxied artifact root)
named by MLFLOW_TRACKING_URI, nothing written to the project's own store. The pipeline, run by a Prefect worker,
and `medlora serve` against such a server: tests/test_deployments.py."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from tasks.params import load_params
from tasks.tracking import configure_tracking
from tests.conftest import PROJECT

pytest_plugins = ["tests.servers"]  # its helpers are imported in the tests, after pytest has loaded it


@pytest.fixture
def started_with(monkeypatch):
    """Run this process's tracking code as if medlora had been started with MLFLOW_TRACKING_URI=uri; MLflow's
    own URIs and the variables it writes are put back afterwards."""
    import tasks.tracking

    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    for name in tasks.tracking.TRACKING_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)  # restored as they were when the test ends
        monkeypatch.setitem(tasks.tracking.STARTED_WITH, name, None)  # whatever the developer's shell exports

    def start_with(uri: str) -> None:
        monkeypatch.setitem(tasks.tracking.STARTED_WITH, "MLFLOW_TRACKING_URI", uri)

    yield start_with
    mlflow.set_tracking_uri(previous[0])
    mlflow.set_registry_uri(previous[1])


def test_a_uri_mlflow_put_in_the_environment_does_not_send_the_next_project_to_the_last_ones_store(
        tmp_path, started_with):
    first, second = tmp_path / "first", tmp_path / "second"
    for project in (first, second):
        project.mkdir()
        (project / "params.yaml").write_text((PROJECT / "params.yaml").read_text())
    configure_tracking(load_params(first), first)
    assert os.environ["MLFLOW_TRACKING_URI"] == f"sqlite:///{first / 'mlflow.db'}"  # MLflow's doing, for subprocesses
    assert configure_tracking(load_params(second), second) == f"sqlite:///{second / 'mlflow.db'}"
    assert mlflow.get_registry_uri() == f"sqlite:///{second / 'mlflow.db'}"
    assert mlflow.get_experiment_by_name("medlora").artifact_location == (second / "mlartifacts").as_uri()


def test_a_postgresql_backed_mlflow_server_keeps_runs_models_and_artifacts(postgres_url, tmp_path, started_with):
    from tests.servers import running_mlflow_server

    (tmp_path / "params.yaml").write_text((PROJECT / "params.yaml").read_text())
    params = load_params(tmp_path)
    with running_mlflow_server(postgres_url, tmp_path) as uri:
        started_with(uri)
        assert configure_tracking(params, tmp_path) == uri
        with mlflow.start_run(run_name="smoke") as run:
            mlflow.log_param("backend", "postgresql")
            mlflow.log_text("adapter bytes", "adapter/adapter_model.safetensors")
            info = mlflow.pyfunc.log_model(name="model", python_model=_Echo(), registered_model_name="medlora-smoke")
        client = MlflowClient(uri, uri)
        experiment = client.get_experiment_by_name(params.tracking.experiment)
        assert experiment.artifact_location.startswith("mlflow-artifacts:")  # the server's root, not the project
        assert client.get_run(run.info.run_id).data.params == {"backend": "postgresql"}
        [version] = client.search_model_versions("name='medlora-smoke'")
        assert version.version == str(info.registered_model_version) == "1"
        fetched = client.download_artifacts(run.info.run_id, "adapter", str(tmp_path / "fetched"))
        assert (Path(fetched) / "adapter_model.safetensors").read_text() == "adapter bytes"
        assert mlflow.pyfunc.load_model("models:/medlora-smoke/1").predict(["hi"]) == ["hi"]
    assert list((tmp_path / "artifacts").rglob("adapter_model.safetensors"))  # under --artifacts-destination
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / params.tracking.artifact_dir).exists()


class _Echo(mlflow.pyfunc.PythonModel):
    def predict(self, model_input: list[str], params=None) -> list[str]:
        return model_input
