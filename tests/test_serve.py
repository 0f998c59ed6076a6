"""Serving the champion bundle: the registered bundle, `medlora serve` started for real on loopback (OpenAI
client, streaming, bad requests, hot reload during a stream of requests), batching equal to answering one
by one, and the bundle served by `mlflow models serve` from a copy outside the project."""

from __future__ import annotations

import concurrent.futures
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml

from tasks.finetune.examples import Request
from tasks.params import apply_overrides, load_params
from tests.conftest import _venv_env, project_mlflow

BUNDLE = "medlora-bundle"
NOTE = "Chest pain and dyspnea on exertion; echo ordered. Plan: stress test."
PLANTED = "Zebulon Quintero-Haversham"  # a name that must never reach a log or an error
VENV_BIN = str(Path(sys.executable).parent)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until(url: str, timeout: float = 180, process: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(url)


def _use_registry(project: Path) -> None:
    """Tracking and registry both (a registry URI set by an earlier test's project would stay otherwise)."""
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    mlflow.set_registry_uri(f"sqlite:///{project / 'mlflow.db'}")


@pytest.fixture(scope="module")
def server(finished_project, tmp_path_factory):
    """`medlora serve` on the champion bundle, reloading every second; its log is kept for the PHI check."""
    project, _, _ = finished_project
    client = project_mlflow(project)
    first = min(client.search_model_versions(f"name='{BUNDLE}'"), key=lambda v: int(v.version))
    client.set_registered_model_alias(BUNDLE, "champion", first.version)
    apply_overrides(project, merge={"serve": {"reload_interval_s": 1, "batch_window_ms": 50}})
    port = _free_port()
    log_path = tmp_path_factory.mktemp("serve") / "server.log"
    env = _venv_env()
    with log_path.open("w") as log:
        process = subprocess.Popen([f"{VENV_BIN}/medlora", "--root", str(project), "serve", "--port", str(port)],
                                   stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until(f"{url}/ready", process=process)
        yield url, project, log_path, str(first.version)
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_bundle_carries_its_code_base_model_and_safety_thresholds(finished_project, tmp_path):
    import mlflow

    project, _, _ = finished_project
    _use_registry(project)
    bundle = Path(mlflow.artifacts.download_artifacts(f"models:/{BUNDLE}/1", dst_path=str(tmp_path)))
    assert (bundle / "code" / "tasks" / "serve" / "bundle.py").exists() and (bundle / "requirements.txt").exists()
    assert "peft==" in (bundle / "requirements.txt").read_text()
    flavor = yaml.safe_load((bundle / "MLmodel").read_text())["flavors"]["python_function"]
    paths = {key: value["path"] for key, value in flavor["artifacts"].items()}
    assert {"router", "base_model", "adapter-multitask", "adapter-pubmedqa"} <= set(paths)  # the tiny base travels inside
    assert all((bundle / path).exists() and not Path(path).is_absolute() for path in paths.values())
    config = flavor["config"]
    evaluation = json.loads((project / "models" / "router" / "evaluation.json").read_text())
    assert config["safety"] == evaluation["safety"] and config["base_fingerprint"] == evaluation["base_fingerprint"]
    assert set(config["safety"]["notes"]) == {"entropy", "energy"} and config["safety"]["calibrated_on"]["notes"] > 1
    assert str(project) not in json.dumps(config)


def test_openai_client_chat_completion_and_models(server):
    from openai import OpenAI

    url, project, _, version = server
    client = OpenAI(base_url=f"{url}/v1", api_key="not-needed")
    params = load_params(project)
    served = {m.id for m in client.models.list().data}
    assert {"auto", "base", "multitask", "pubmedqa", *params.experts} <= served
    chat = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": NOTE}], max_tokens=6)
    assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens <= 6
    extension = chat.model_extra["medlora"]
    assert sum(extension["weights"].values()) == pytest.approx(1.0, abs=1e-4) and extension["expert"] in [*params.experts, "pubmedqa"]
    assert extension["needs_review"] == bool(extension["flags"]) and extension["bundle"] == {"name": BUNDLE, "version": version}
    completion = client.completions.create(model="orthopedic", prompt="Knee pain after a fall; x-ray negative.", max_tokens=5)
    assert completion.model_extra["medlora"]["weights"] == {"orthopedic": 1.0}
    question = client.completions.create(model="pubmedqa", prompt="Does aspirin lower mortality?", max_tokens=4,
                                         extra_body={"context": "In 400 adults aspirin lowered mortality."})
    assert question.model_extra["medlora"]["answer"] in ("yes", "no", "maybe")
    base = client.completions.create(model="base", prompt=NOTE, max_tokens=4)
    assert base.model_extra["medlora"]["weights"] == {} and base.model_extra["medlora"]["expert"] is None


def test_streamed_tokens_make_the_same_text_as_the_whole_answer(server):
    from openai import OpenAI

    url, _, _, _ = server
    client = OpenAI(base_url=f"{url}/v1", api_key="not-needed")
    whole = client.chat.completions.create(model="cardiopulmonary", messages=[{"role": "user", "content": NOTE}], max_tokens=12)
    pieces, last = [], None
    for chunk in client.chat.completions.create(model="cardiopulmonary", messages=[{"role": "user", "content": NOTE}],
                                                max_tokens=12, stream=True):
        pieces.append(chunk.choices[0].delta.content or "")
        last = chunk
    assert "".join(pieces).strip() == whole.choices[0].message.content
    assert last.choices[0].finish_reason == whole.choices[0].finish_reason
    assert last.model_extra["medlora"]["weights"] == {"cardiopulmonary": 1.0}


def test_concurrent_requests_share_a_generation_pass(server):
    url, _, _, _ = server
    notes = [f"{NOTE} Day {i}." for i in range(8)]
    models = ["auto", "orthopedic", "neuro", "base"] * 2

    def send(pair):
        note, model = pair
        return httpx.post(f"{url}/v1/completions", json={"model": model, "prompt": note, "max_tokens": 4}, timeout=120)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(send, zip(notes, models)))
    assert all(r.status_code == 200 for r in responses)
    metrics = httpx.get(f"{url}/metrics").text
    sizes = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines() if line.startswith("medlora_batch_size_")}
    assert sizes["medlora_batch_size_count"] < sizes["medlora_batch_size_sum"]  # some batch held more than one request
    assert "medlora_time_to_first_token_seconds_bucket" in metrics and "medlora_router_seconds_sum" in metrics


BAD_REQUESTS = [
    ("/v1/completions", {"model": "auto", "prompt": "   "}, 400),
    ("/v1/completions", {"model": "auto"}, 400),                                           # no prompt
    ("/v1/chat/completions", {"model": "auto", "messages": [{"role": "user"}]}, 400),      # wrong schema
    ("/v1/chat/completions", {"model": "auto", "messages": [{"role": "doctor", "content": PLANTED}]}, 400),
    ("/v1/chat/completions", {"model": "auto", "messages": [{"role": "system", "content": PLANTED}, {"role": "user", "content": " "}]}, 400),
    ("/v1/completions", {"model": "auto", "prompt": PLANTED, "temperature": 7}, 400),
    ("/v1/completions", {"model": "auto", "prompt": PLANTED, "max_tokens": 100000}, 400),
    ("/v1/completions", {"model": "auto", "prompt": PLANTED, "max_tokens": 0}, 400),
    ("/v1/completions", {"model": "auto", "prompt": PLANTED, "n": 3}, 400),
    ("/v1/completions", {"model": "auto", "prompt": PLANTED, "stop": ["."]}, 400),
    ("/v1/completions", {"model": "no-such-expert", "prompt": PLANTED}, 404),
    ("/v1/completions", {"model": "auto", "prompt": PLANTED * 10000}, 413),
    ("/v1/completions", {"model": "auto", "prompt": "x", "context": "  "}, 400),
]


@pytest.mark.parametrize(("path", "body", "status"), BAD_REQUESTS)
def test_each_bad_request_gets_its_4xx_with_a_short_message(server, path, body, status):
    url, _, _, _ = server
    response = httpx.post(f"{url}{path}", json=body, timeout=60)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["message"] and "Traceback" not in response.text and PLANTED not in response.text and len(response.text) < 500
    assert httpx.get(f"{url}/health").status_code == 200


def test_malformed_json_is_a_400_and_request_text_never_reaches_the_log(server):
    url, _, log_path, _ = server
    response = httpx.post(f"{url}/v1/completions", content=f'{{"model": "auto", "prompt": "{PLANTED}', timeout=30,
                          headers={"content-type": "application/json"})
    assert response.status_code == 400 and PLANTED not in response.text
    assert response.json()["error"]["message"] == "the request body is not valid JSON"
    assert PLANTED not in log_path.read_text()


def test_a_full_queue_is_refused_with_429(finished_project):
    from fastapi.testclient import TestClient

    from tasks.serve.api import create_app
    from tasks.serve.batching import Batcher, Job, ServeMetrics
    from tasks.serve.engine import Ask
    from tasks.serve.reload import ModelHolder, ModelSource, load_served

    project, _, _ = finished_project
    _use_registry(project)
    holder = ModelHolder(ModelSource.parse(f"models:/{BUNDLE}/1"))
    holder.current = load_served(f"models:/{BUNDLE}/1", BUNDLE, "1")
    metrics = ServeMetrics()
    batcher = Batcher(lambda: holder.current, 0, 4, 1, metrics)  # never started: the queue stays full
    batcher.submit(Job(Ask(Request(text=NOTE)), on_done=lambda answer, error: None))
    with TestClient(create_app(holder, batcher, metrics, 1000)) as client:
        response = client.post("/v1/completions", json={"model": "auto", "prompt": NOTE})
    assert response.status_code == 429 and response.headers["retry-after"] == "1"
    assert response.json()["error"]["type"] == "rate_limit_error"


def test_the_student_is_served_by_the_same_server_as_one_model_without_a_router(finished_project):
    from fastapi.testclient import TestClient

    from tasks.serve.server import build_server

    project, _, _ = finished_project
    _use_registry(project)
    with TestClient(build_server(load_params(project), "models:/medlora-student/1")) as client:
        deadline = time.time() + 120
        while client.get("/ready").status_code != 200 and time.time() < deadline:
            time.sleep(0.2)
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["auto"]
        response = client.post("/v1/chat/completions", json={"model": "medlora-student", "max_tokens": 4,
                                                              "messages": [{"role": "user", "content": NOTE}]})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["usage"]["completion_tokens"] <= 4 and body["medlora"]["weights"] == {}
        assert body["medlora"]["bundle"] == {"name": "medlora-student", "version": "1"}
        question = client.post("/v1/completions", json={"model": "auto", "prompt": "Does aspirin help?", "max_tokens": 2,
                                                        "context": "Aspirin lowered mortality in 400 adults."})
        assert question.json()["medlora"]["answer"] in ("yes", "no", "maybe")
        assert client.post("/v1/completions", json={"model": "orthopedic", "prompt": NOTE}).status_code == 404


def test_a_mixed_batch_answers_as_each_request_alone(finished_project):
    """Rows of one generation pass with different mixes, budgets and kinds get what they get one by one."""
    import mlflow

    from tasks.serve.engine import Ask

    project, _, _ = finished_project
    _use_registry(project)
    served = mlflow.pyfunc.load_model(f"models:/{BUNDLE}/1").unwrap_python_model().served
    asks = [Ask(Request(text=NOTE)), Ask(Request(text="Knee pain after a fall."), "orthopedic", max_new_tokens=3),
            Ask(Request(question="Does aspirin help?", context="Aspirin lowered mortality in 400 adults."), "pubmedqa"),
            Ask(Request(messages=(("user", "Headache and photophobia for two days."),)), "base", max_new_tokens=5)]
    streamed: list[list[int]] = []
    together = served.answer(asks, on_step=streamed.append)
    alone = [served.answer([ask])[0] for ask in asks]
    assert [a.text for a in together] == [a.text for a in alone]
    assert [a.weights for a in together] == [a.weights for a in alone]
    assert [a.completion_tokens for a in together] == [a.completion_tokens for a in alone]
    assert together[1].completion_tokens <= 3 and together[3].completion_tokens <= 5
    assert together[2].answer in ("yes", "no", "maybe")
    assert streamed and all(len(step) == len(asks) for step in streamed)
    whole = served.answer([Ask(Request(text=NOTE), "base", max_new_tokens=7, ignore_eos=True)])[0]
    assert (whole.completion_tokens, whole.finished) == (7, "length")  # vLLM's ignore_eos: the whole budget


def test_promotion_during_a_stream_of_requests_switches_versions_without_a_failure(server):
    url, project, _, first = server
    client = project_mlflow(project)
    original = client.get_model_version(BUNDLE, first)
    second = str(client.create_model_version(BUNDLE, original.source, original.run_id).version)
    statuses, versions = [], []

    def send(i: int):
        response = httpx.post(f"{url}/v1/completions", json={"model": "auto", "prompt": f"{NOTE} {i}", "max_tokens": 3},
                              timeout=120)
        statuses.append(response.status_code)
        if response.status_code == 200:
            versions.append(response.json()["medlora"]["bundle"]["version"])

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(send, i) for i in range(8)]
        client.set_registered_model_alias(BUNDLE, "champion", second)
        deadline = time.time() + 120
        i = 8
        while time.time() < deadline and (not versions or versions[-1] != second):
            futures.append(pool.submit(send, i))
            i += 1
            time.sleep(0.2)
        concurrent.futures.wait(futures)
    assert statuses and set(statuses) == {200}
    assert versions[0] == first and versions[-1] == second
    assert httpx.get(f"{url}/ready").json()["version"] == second
    assert "medlora_reloads_total 1.0" in httpx.get(f"{url}/metrics").text
    client.set_registered_model_alias(BUNDLE, "champion", first)


def test_the_bundle_serves_from_a_copy_outside_the_project(finished_project, tmp_path):
    """Downloaded to a directory of its own and loaded there: its code comes from the copy, nothing names the project."""
    import mlflow

    project, _, _ = finished_project
    _use_registry(project)
    copy = Path(mlflow.artifacts.download_artifacts(f"models:/{BUNDLE}/1", dst_path=str(tmp_path / "bundle")))
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
    env["PATH"] = f"{VENV_BIN}:{env['PATH']}"
    check = subprocess.run([sys.executable, "-c", (
        "import sys, json, mlflow.pyfunc, pandas as pd\n"
        f"model = mlflow.pyfunc.load_model({str(copy)!r})\n"
        "import tasks\n"
        f"assert tasks.__file__.startswith({str(copy)!r}), tasks.__file__\n"
        f"print(model.predict(pd.DataFrame([{{'text': {NOTE!r}}}])).to_json(orient='records'))\n")],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stderr[-2000:]
    assert json.loads(check.stdout.strip().splitlines()[-1])[0]["text"] is not None

    port = _free_port()
    process = subprocess.Popen(["mlflow", "models", "serve", "-m", str(copy), "--env-manager", "local", "-p", str(port),
                                "-h", "127.0.0.1"], cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_until(f"http://127.0.0.1:{port}/ping", process=process)
        rows = [{"text": NOTE}, {"text": ""}, {"question": "Does aspirin help?", "context": "Aspirin helped 400 adults."}]
        response = httpx.post(f"http://127.0.0.1:{port}/invocations", json={"dataframe_records": rows}, timeout=120)
        assert response.status_code == 200
        predictions = pd.DataFrame(response.json()["predictions"])
        assert predictions.loc[0, "text"] is not None and predictions.loc[1, "error"].startswith("input row 1:")
        assert predictions.loc[2, "answer"] in ("yes", "no", "maybe")
    finally:
        process.terminate()
        process.wait(timeout=30)
