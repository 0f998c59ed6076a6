"""The whole pipeline on the tiny preset: real Prefect, DVC, GX, Presidio, PEFT and MLflow in a temp project."""

import json
import re

import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from flows.pipeline import pipeline_flow
from tasks.corpus.generate import read_gold_spans
from tasks.params import load_params


@pytest.fixture(scope="module")
def finished_project(tmp_path_factory, prefect_api):
    from .conftest import make_project

    project = make_project(tmp_path_factory.mktemp("medlora"))
    first = pipeline_flow(root=str(project))
    second = pipeline_flow(root=str(project))
    return project, first, second


def test_every_stage_ran_then_was_reused(finished_project):
    _, first, second = finished_project
    stages = ["corpus", "prepare_base", "ingest", "train_deid", "deidentify", "validate", "finetune", "register"]
    assert [r.stage for r in first] == stages and not any(r.reused for r in first)
    assert [r.stage for r in second] == stages and all(r.reused for r in second)
    ingest = next(r for r in first if r.stage == "ingest")
    assert ingest.records_in == ingest.records_out + ingest.metrics["quarantined"]


def test_one_registered_model_per_expert_tagged_with_commit_and_data_version(finished_project):
    project, _, _ = finished_project
    params = load_params(project)
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    data_version = next(o["md5"] for o in lock["stages"]["validate"]["outs"] if o["path"] == "data/validated")
    for expert in params.experts:
        versions = client.search_model_versions(f"name='medlora-expert-{expert}'")
        assert len(versions) == 1
        tags = versions[0].tags
        assert len(tags["git_commit"].removesuffix("-dirty")) == 40
        assert tags["dvc_data_version"] == data_version
        adapter = project / "models" / "adapters" / expert
        assert (adapter / "adapter_config.json").exists() and (adapter / "adapter_model.safetensors").exists()


def _mentions(value: str, text: str) -> bool:
    return re.search(rf"(?<![a-z0-9]){re.escape(value)}(?![a-z0-9])", text) is not None


def test_no_gold_phi_reaches_deidentified_data_or_registered_artifacts(finished_project):
    project, _, _ = finished_project
    gold = read_gold_spans(project / "data" / "raw" / "sample")
    identifying = ("PATIENT", "CLINICIAN", "SSN", "MRN", "EMAIL", "PHONE", "STREET")
    gold_by_row = {row: [s.text.lower() for s in spans if s.entity_type in identifying]
                   for row, spans in enumerate(gold.values(), start=1)}  # JSONL line = source row
    deid = pd.read_parquet(project / "data" / "deid" / "notes.parquet")
    # Per note: a surrogate may by chance be another patient's real surname, never this note's.
    leaked = [(row, value) for row, text, target in zip(deid["source_row"], deid["text"], deid["target"])
              for value in gold_by_row[row] if _mentions(value, f"{text}\n{target}".lower())]
    assert leaked == []
    outside_phi_zone = [p for p in project.rglob("*") if p.is_file() and p.suffix in (".json", ".yaml", ".yml", ".txt", ".MLmodel")
                        and not {"raw", "base", ".dvc", ".git"} & set(p.parts)]  # base: the tokenizer's vocabulary
    blob = " ".join(p.read_text(errors="ignore").lower() for p in outside_phi_zone)
    every_value = {v for values in gold_by_row.values() for v in values if len(v) > 3}
    assert sorted(v for v in every_value if _mentions(v, blob)) == []


def test_outputs_pushed_to_the_local_remote_except_the_phi_zone(finished_project):
    project, _, _ = finished_project
    remote_files = [p for p in (project / ".dvc-remote").rglob("*") if p.is_file()]
    assert remote_files
    raw_hashes = json.dumps(yaml.safe_load((project / "dvc.lock").read_text())["stages"]["ingest"]["outs"])
    assert not any(p.name in raw_hashes for p in remote_files)


def test_validation_gate_stops_the_flow_before_training(tmp_path, prefect_api):
    from tasks.validate.suite import ValidationGateError

    from .conftest import make_project

    project = make_project(tmp_path, overrides={"validate": {"max_target_chars": 5}})
    with pytest.raises(ValidationGateError, match=r"36 of 36 notes quarantined \(100.0%\), more than validate.max_quarantined_share"):
        pipeline_flow(root=str(project))
    assert not (project / "models" / "adapters").exists()


def test_validate_logs_counts_and_data_docs_to_mlflow_and_prefect(finished_project):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    project, first, _ = finished_project
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.`medlora.stage` = 'validate'")
    assert len(runs) == 1
    metrics, docs = runs[0].data.metrics, runs[0].data.tags["medlora.data_docs"]
    assert metrics["read"] == metrics["kept"] + metrics["quarantined"] > 0
    assert metrics["kept"] == metrics["train_notes"] + metrics["val_notes"] + metrics["test_notes"]
    assert docs.endswith("index.html") and (project / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html").exists()
    assert any(a.path.startswith("data_docs") for a in client.list_artifacts(runs[0].info.run_id))
    with get_client(sync_client=True) as prefect:
        links = prefect.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["validate-data-docs"])))
    assert links and "data_docs/local_site/index.html" in links[0].data
