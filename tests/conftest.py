"""Fixtures that build small real things: a sample corpus, a temp DVC project, a Prefect test API."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
os.environ.setdefault("MEDLORA_DEID_KEY", "medlora-test-key")  # the same pseudonyms, hence splits, every run
# Each test project uses its own MLflow store: neither a developer's shell nor MLflow (which writes the URIs it is
# given into the environment) may redirect the projects that tests start in subprocesses.
TRACKING_ENVIRONMENT = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
for _name in TRACKING_ENVIRONMENT:
    os.environ.pop(_name, None)

from tasks.params import apply_overrides  # noqa: E402

PROJECT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT.parent / "shared" / "data"


def shared_corpus(relative: str) -> Path:
    """A corpus from ../shared/data, or a skip that says why (a user's fresh clone has none)."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"{path} not found: the shared corpora exist in CI and dev machines, not in a fresh clone")
    return path


@pytest.fixture(scope="session")
def prefect_api():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def make_project(directory: Path, preset: str = "tiny", overrides: dict | None = None) -> Path:
    """A real medlora project in `directory`: our dvc.yaml and stage code, a git repo, DVC with a local remote."""
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(PROJECT / name, directory / name)
    for code in ("tasks", "flows"):  # the stages' code deps (dvc.yaml)
        shutil.copytree(PROJECT / code, directory / code, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(PROJECT / "models" / "deid", directory / "models" / "deid")  # the shipped PHI token model
    shutil.copy(PROJECT / "params.yaml", directory / "params.yaml")  # what `medlora run --preset` does, comments kept
    apply_overrides(directory, str(PROJECT / "presets" / f"{preset}.yaml"), merge=overrides)
    git = ["git", "-c", "user.email=test@medlora", "-c", "user.name=medlora-test"]
    subprocess.run([*git, "init", "-q"], cwd=directory, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=directory, check=True, env=_venv_env())
    subprocess.run(["dvc", "remote", "add", "-d", "local", str(directory / ".dvc-remote")], cwd=directory, check=True, env=_venv_env())
    subprocess.run([*git, "add", "-A"], cwd=directory, check=True)
    subprocess.run([*git, "commit", "-qm", "test project"], cwd=directory, check=True)
    return directory


def _venv_env() -> dict:
    env = {key: value for key, value in os.environ.items() if key not in TRACKING_ENVIRONMENT}
    env["PATH"] = f"{Path(os.sys.executable).parent}:{env['PATH']}"
    return env


def project_mlflow(project: Path):
    """An MlflowClient on a project's own SQLite store, registry included (an earlier test's set_registry_uri would
    otherwise send the registry calls elsewhere)."""
    from mlflow import MlflowClient

    store = f"sqlite:///{project / 'mlflow.db'}"
    return MlflowClient(tracking_uri=store, registry_uri=store)


@pytest.fixture
def tiny_project(tmp_path):
    return make_project(tmp_path)


@pytest.fixture(scope="session")
def sample_corpus():
    from tasks.corpus.generate import generate_corpus

    return generate_corpus(notes=80, patients=30, seed=7)


SHIPPED_DEID_MODEL = PROJECT / "models" / "deid" / "token_model.joblib"


@pytest.fixture(scope="session")
def deid_params():
    """De-identify params with the PHI token model that ships with medlora (what a fresh clone uses)."""
    from tasks.params import DeidentifyParams, DeidModelParams

    return DeidentifyParams(model=DeidModelParams(path=str(SHIPPED_DEID_MODEL)))


def write_question_corpus(path: Path, count: int, seed: int = 0) -> Path:
    """A small PubMedQA-shaped file written by our own code (the pipeline's task expert reads this format)."""
    import json
    import random

    rng = random.Random(seed)
    drugs, outcomes = ["aspirin", "statins", "metformin", "heparin"], ["mortality", "stroke", "readmission", "pain"]
    items = {}
    for number in range(count):
        drug, outcome, decision = rng.choice(drugs), rng.choice(outcomes), rng.choice(["yes", "no", "maybe"])
        effect = {"yes": "lowered", "no": "did not change", "maybe": "may have lowered"}[decision]
        items[str(1000 + number)] = {
            "QUESTION": f"Does {drug} reduce {outcome}?",
            "CONTEXTS": [f"We studied {drug} in {rng.randint(50, 900)} adults.", f"In the trial {drug} {effect} {outcome}."],
            "final_decision": decision,
            "LONG_ANSWER": f"{drug.capitalize()} {effect} {outcome} in adults.",
        }
    path.write_text(json.dumps(items))
    return path


@pytest.fixture(scope="session")
def finished_project(tmp_path_factory, prefect_api):
    """The whole pipeline run twice on the tiny preset (shared by the pipeline and serving tests)."""
    from flows.pipeline import pipeline_flow

    directory = tmp_path_factory.mktemp("medlora")
    questions = write_question_corpus(directory / "questions.json", count=40)
    # Nephrology gets no trained expert: the route stage composes one from a few of its notes.
    project = make_project(directory, overrides={"finetune": {"task_experts": {"pubmedqa": {"path": str(questions)}}},
                                                 "experts": {"renal_uro": ["Urology"]},
                                                 "route": {"compose": {"specialties": {"nephrology": ["Nephrology"]}}}})
    first = pipeline_flow(root=str(project))
    second = pipeline_flow(root=str(project))
    return project, first, second

