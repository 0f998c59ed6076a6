"""Operations on real servers, as a team runs medlora: prefect.yaml's deployments on a Prefect server, run by a
process worker on the tiny preset and logging to an `mlflow server` (named by MLFLOW_TRACKING_URI); then
`medlora serve` loads the bundle from that server. One pipeline run serves every check: it is the slow part."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient

from tasks.params import load_params
from tests.conftest import PROJECT, _venv_env, make_project

pytest_plugins = ["tests.servers"]  # mlflow_server; its helpers are imported in the tests

PREFECT = str(Path(sys.executable).parent / "prefect")
NOTE = "Chest pain and dyspnea on exertion; echo ordered. Plan: stress test."


def _start(command: list[str], env: dict, log: Path, cwd: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen(command, env=env, cwd=cwd, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """`prefect server start` on loopback with its own database; yields the environment that reaches it."""
    from tests.servers import free_port, stop, wait_for_http

    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = _venv_env() | {
        "PREFECT_HOME": str(home), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_UI_ENABLED": "false",
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2", "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_SERVER_SERVICES_LATE_RUNS_LOOP_SECONDS": "1", "PREFECT_SERVER_SERVICES_LATE_RUNS_AFTER_SECONDS": "2",
        "PREFECT_WORKER_PREFETCH_SECONDS": "2", "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.5"}
    server = _start([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env, home / "server.log")
    try:
        wait_for_http(f"http://127.0.0.1:{port}/api/health", server, home / "server.log", timeout=180)
        yield env
    finally:
        stop(server)


def _prefect(env: dict, *args: str, cwd: Path | None = None) -> str:
    done = subprocess.run([PREFECT, "--no-prompt", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _client(env: dict):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    class Scoped:  # the test process may also hold the session's ephemeral test API: point at the server
        async def __aenter__(self):
            self._settings = temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]})
            self._settings.__enter__()
            self._client = get_client()
            return await self._client.__aenter__()

        async def __aexit__(self, *exc):
            await self._client.__aexit__(*exc)
            self._settings.__exit__(*exc)

    return Scoped()


async def _wait_final(env: dict, run_ids, timeout_s: float = 900) -> dict:
    deadline = time.monotonic() + timeout_s
    async with _client(env) as client:
        while True:
            runs = {i: await client.read_flow_run(i) for i in run_ids}
            if all(r.state is not None and r.state.is_final() for r in runs.values()):
                return runs
            assert time.monotonic() < deadline, {i: r.state for i, r in runs.items()}
            await asyncio.sleep(2)


async def _logs(env: dict, run_id) -> str:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async with _client(env) as client:
        logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
    return "\n".join(entry.message for entry in logs)


async def scheduled_runs(env: dict, deployment_id) -> list:
    """The runs the server's scheduler created for a deployment (not those triggered by hand)."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    async with _client(env) as client:
        runs = await client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))
    return [r for r in runs if r.auto_scheduled]


def test_deployments_run_on_a_server_by_a_process_worker_log_to_an_mlflow_server_and_a_schedule_fires(
        prefect_server, mlflow_server, tmp_path):
    from prefect.client.schemas.schedules import IntervalSchedule
    from prefect.deployments import run_deployment

    from tests.servers import free_port, stop, wait_for_http

    env = prefect_server
    # The tiny preset with less to train and score (no question expert: its corpus is absent, so it is skipped; no
    # synthetic examples, no student): this test is about where things run and are logged, not about the models.
    project = make_project(tmp_path, overrides={
        "finetune": {"task_experts": {"pubmedqa": {"path": str(tmp_path / "no-questions.json")}}}, "augment": {"min_train_notes": 0},
        "distil": {"enabled": False},
        "route": {"layer": [0], "evaluate_notes": 4}, "serve": {"calibration_requests": 8},
        "evaluate": {"notes": 3, "questions": 4, "adversarial_requests": 0}})
    shutil.copy(PROJECT / "prefect.yaml", project / "prefect.yaml")

    _prefect(env, "work-pool", "create", "medlora", "--type", "process")
    _prefect(env, "deploy", "--all", cwd=project)

    async def deployments():
        async with _client(env) as client:
            return {f"{(await client.read_flow(d.flow_id)).name}/{d.name}": d for d in await client.read_deployments()}

    deployed = asyncio.run(deployments())
    assert set(deployed) == {"medlora-pipeline/nightly", "retrain-expert/retrain-expert", "drift/drift-check",
                             "review-resume/review-resume"}, set(deployed)
    nightly = deployed["medlora-pipeline/nightly"]
    assert [s.schedule.cron for s in nightly.schedules] == ["0 2 * * *"]

    # No worker yet: a run waits past its start time and the server marks it Late (README: troubleshooting).
    async def trigger(name: str, **parameters):
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
            return (await run_deployment(name, parameters=parameters, timeout=0)).id

    late = asyncio.run(trigger("review-resume/review-resume"))

    async def state_name(run_id):
        async with _client(env) as client:
            return (await client.read_flow_run(run_id)).state.name

    deadline = time.monotonic() + 120
    while asyncio.run(state_name(late)) != "Late":
        assert time.monotonic() < deadline, "a run with no worker was never marked Late"
        time.sleep(2)

    # the worker's environment is its runs': they log to the MLflow server
    worker = _start([PREFECT, "worker", "start", "--pool", "medlora", "--type", "process"],
                    env | {"MEDLORA_PROJECT_DIR": str(project), "MLFLOW_TRACKING_URI": mlflow_server},
                    tmp_path / "worker.log")
    try:
        # The pipeline run (two at once queue on the project lock: tests/test_run_lock.py).
        pipeline = asyncio.run(trigger("medlora-pipeline/nightly"))
        runs = asyncio.run(_wait_final(env, [late, pipeline]))
        assert {i: r.state.type.value for i, r in runs.items()} == {i: "COMPLETED" for i in runs}, \
            (tmp_path / "worker.log").read_text()[-5000:]
        assert "files to the DVC remote" in asyncio.run(_logs(env, pipeline))  # every stage ran, outputs pushed
        status = subprocess.run(["dvc", "status"], cwd=project, capture_output=True, text=True, env=env, check=True)
        assert "changed" not in status.stdout, status.stdout
        bundle, bundle_version = assert_logged_to(mlflow_server, project, tmp_path)

        # The schedules: the server's scheduler turned nightly's cron into runs at 02:00 UTC, and a scheduled run
        # fires. review-resume (cheap to run) gets a second schedule due in a few seconds; pausing and resuming
        # the deployment makes the scheduler plan its runs again from both schedules.
        planned = asyncio.run(scheduled_runs(env, nightly.id))
        assert planned and all(r.expected_start_time.astimezone(timezone.utc).strftime("%H:%M") == "02:00" for r in planned)
        resume = deployed["review-resume/review-resume"]

        async def schedule_soon():
            soon = IntervalSchedule(interval=timedelta(hours=1), anchor_date=datetime.now(timezone.utc) + timedelta(seconds=5))
            async with _client(env) as client:
                await client.create_deployment_schedules(resume.id, [(soon, True)])
                await client.pause_deployment(resume.id)
                await client.resume_deployment(resume.id)

        asyncio.run(schedule_soon())
        deadline = time.monotonic() + 300
        while not (fired := [r for r in asyncio.run(scheduled_runs(env, resume.id)) if r.state.is_final()]):
            assert time.monotonic() < deadline, "no scheduled run fired"
            time.sleep(2)
        assert fired[0].state.is_completed(), fired[0].state
    finally:
        stop(worker)

    # `medlora serve` follows champion on the same MLflow server (what `medlora promote` would have moved).
    MlflowClient(mlflow_server, mlflow_server).set_registered_model_alias(bundle, "champion", bundle_version)
    port, log = free_port(), tmp_path / "serve.log"
    server = _start([str(Path(sys.executable).parent / "medlora"), "--root", str(project), "serve", "--port", str(port)],
                    _venv_env() | {"MLFLOW_TRACKING_URI": mlflow_server}, log, cwd=project)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ready", server, log, timeout=240)
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/completions", timeout=120,
                            json={"model": "auto", "prompt": NOTE, "max_tokens": 4}).json()
    finally:
        stop(server)
    assert answer["choices"][0]["text"] is not None
    assert answer["medlora"]["bundle"] == {"name": bundle, "version": bundle_version}
    assert not (project / "mlflow.db").exists() and not (project / "mlartifacts").exists()


def assert_logged_to(server: str, project: Path, scratch: Path) -> tuple[str, str]:
    """The stages' runs, one version per expert and the adapters are on the MLflow server; nothing in the project's
    own store. Returns the bundle's name and version."""
    params = load_params(project)
    client = MlflowClient(server, server)
    experiment = client.get_experiment_by_name(params.tracking.experiment)
    runs = client.search_runs([experiment.experiment_id], max_results=500)
    assert {"validate", "drift", "finetune", "route"} <= {r.data.tags.get("medlora.stage") for r in runs}
    for expert in [e for e in params.trained_experts() if e not in params.finetune.task_experts]:
        [version] = client.search_model_versions(f"name='{params.tracking.model_prefix}-expert-{expert}'")
        assert version.tags["expert"] == expert
    adapter = Path(client.download_artifacts(version.run_id, "adapter", str(scratch)))
    assert (adapter / "adapter_config.json").exists() and (adapter / "adapter_model.safetensors").stat().st_size > 0
    assert not (project / "mlflow.db").exists() and not (project / "mlartifacts").exists()
    bundle = f"{params.tracking.model_prefix}-bundle"
    [bundle_version] = client.search_model_versions(f"name='{bundle}'")
    return bundle, str(bundle_version.version)
