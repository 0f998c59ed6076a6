"""A run that waits for review: Prefect pauses it for input, the last review decision (through the CLI)
resumes it, and the promotion gate then runs in it. Real Prefect API, MLflow registry and review store."""

from __future__ import annotations

import json
import threading
import time

import mlflow
import yaml
from mlflow import MlflowClient
from prefect import flow
from prefect.client.orchestration import get_client

from flows.cli import main
from flows.evaluate import wait_for_reviews
from tasks.drift.summary import NO_REFERENCE, DriftSummary
from tasks.evaluate.stage import EVALUATION_DIR, EVALUATION_FILE
from tasks.params import deep_merge, load_params
from tasks.review.project import open_store
from tasks.review.store import QueueItem
from tasks.tracking import configure_tracking

from .conftest import PROJECT

BATCH = "batch-1"


def make_waiting_project(root, wait: str):
    params = deep_merge(yaml.safe_load((PROJECT / "params.yaml").read_text()),
                        {"review": {"wait": wait, "poll_interval_s": 1, "wait_timeout_s": 120},
                         "promote": {"metrics": [{"name": "perplexity", "goal": "min"}]}})
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    configure_tracking(load_params(root), root)
    client = MlflowClient()
    client.create_registered_model("medlora-router")
    client.create_model_version("medlora-router", source=str(root), run_id=None)
    evaluation = {"batch": BATCH, "base_model": "tiny-random", "requests": 2, "base": {"metrics": {}, "safety": {}},
                  "candidates": [{"model": "medlora-router", "version": "1", "key": "medlora-router/1", "scope": "all",
                                  "metrics": {"perplexity": 9.0, "critical_error_rate": 0.0},
                                  "base_metrics": {"perplexity": 12.0}, "champion": None}]}
    (root / EVALUATION_DIR).mkdir(parents=True)
    (root / EVALUATION_DIR / EVALUATION_FILE).write_text(json.dumps(evaluation))
    # what the drift stage writes when there is no champion yet: nothing to compare with, nothing blocks
    DriftSummary(NO_REFERENCE, False, "no champion yet", "test", 2).write(root)
    store = open_store(load_params(root), root)
    store.enqueue(BATCH, [QueueItem("medlora-router/1", "medlora-router", "1", f"n-{i}", "Note text.", "Summary.", "Ref.")
                          for i in range(2)])
    store.add_reviewer("alice", "secret-1")
    return store


@flow(persist_result=False)
def scheduled_run(root: str):
    wait_for_reviews(root, load_params(root), BATCH)


def paused_run_ids() -> list[str]:
    async def query():
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
        from prefect.client.schemas.objects import StateType

        async with get_client() as client:
            runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))
            return [str(r.id) for r in runs]

    import asyncio

    return asyncio.run(query())


def test_a_paused_run_resumes_when_the_last_review_is_decided_and_then_promotes(tmp_path, prefect_api):
    store = make_waiting_project(tmp_path, "pause")
    finished = {}
    runner = threading.Thread(target=lambda: finished.setdefault("state", scheduled_run(str(tmp_path), return_state=True)))
    runner.start()
    deadline = time.monotonic() + 120
    while not (store.waiting_runs(BATCH) and set(store.waiting_runs(BATCH)) <= set(paused_run_ids())):
        assert time.monotonic() < deadline, "the run never paused for review"
        assert runner.is_alive(), f"the run ended instead of pausing: {finished}"
        time.sleep(0.5)

    first, second = [item.id for item in store.items(batch=BATCH)]
    assert main(["--root", str(tmp_path), "review", "decide", str(first), "--decision", "approve", "--reviewer", "alice"]) == 0
    time.sleep(2)
    assert runner.is_alive(), "one decision of two must not resume the run"
    assert main(["--root", str(tmp_path), "review", "decide", str(second), "--decision", "approve", "--reviewer", "alice"]) == 0
    runner.join(timeout=120)
    assert not runner.is_alive() and finished["state"].is_completed(), finished
    configure_tracking(load_params(tmp_path), tmp_path)
    assert str(MlflowClient().get_model_version_by_alias("medlora-router", "champion").version) == "1"
    assert not store.waiting_runs(BATCH)
    assert [e.action for e in store.audit(limit=1)] == ["promote"]


def test_a_polling_run_promotes_once_nothing_is_pending(tmp_path, prefect_api):
    store = make_waiting_project(tmp_path, "poll")
    runner = threading.Thread(target=lambda: scheduled_run(str(tmp_path)))
    runner.start()
    time.sleep(1.5)
    for item in store.items(batch=BATCH):
        store.decide(item.id, "alice", "approve" if item.request_id == "n-0" else "reject", "hallucination")
    runner.join(timeout=120)
    assert not runner.is_alive()
    configure_tracking(load_params(tmp_path), tmp_path)
    client = MlflowClient()
    version = client.get_model_version("medlora-router", "1")
    assert version.tags["promotion"] == "keep out" and "approval rate" in version.tags["promotion_reasons"]
    assert mlflow.search_runs(filter_string="tags.`medlora.stage` = 'promote'").shape[0] == 1
