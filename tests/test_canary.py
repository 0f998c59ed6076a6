"""A canary PHI string planted in raw notes must surface nowhere outside the PHI zone."""

import json
import logging

import pytest
from mlflow import MlflowClient

from flows.pipeline import pipeline_flow
from tasks.corpus.generate import generate_corpus
from tasks.deidentify.corpora import CorpusFormatError, read_corpus

CANARY_NAME = "Zarkowitz"
CANARY_MRN = "ZKW44718230"
CANARIES = (CANARY_NAME, CANARY_MRN)


def _plant(directory):
    path = directory / "data" / "raw" / "canary" / "notes.jsonl"
    path.parent.mkdir(parents=True)
    with path.open("w") as handle:
        for note in generate_corpus(notes=80, patients=40, seed=3):
            text = note.text + f"\nFamily contact: daughter Quenby {CANARY_NAME}. MRN: {CANARY_MRN}\n"
            handle.write(json.dumps({"note_id": note.note_id, "patient_id": note.patient_id, "text": text,
                                     "specialty": note.specialty, "target": note.target}) + "\n")
        # One record ingest must quarantine (no such specialty): its reason must not quote it either.
        handle.write(json.dumps({"note_id": "x1", "patient_id": "px", "text": f"Mr. {CANARY_NAME} seen today for review.",
                                 "specialty": f"{CANARY_NAME} clinic", "target": "t"}) + "\n")
    return path


def test_canary_reaches_no_output_log_param_or_error(tmp_path, prefect_api, caplog):
    from .conftest import make_project

    # 80 notes leave one obgyn note, under the gate's minimum per expert; this test is about PHI, not size, so the
    # models are scored on a few notes (every stage still runs and writes what it writes).
    project = make_project(tmp_path, overrides={"input": {"path": "data/raw/canary/notes.jsonl"},
                                                "validate": {"min_records_per_expert": 1,
                                                             "canaries_file": "data/raw/canary/canaries.txt"},
                                                "finetune": {"task_experts": {"pubmedqa": {"path": "data/raw/no-questions.json"}}},
                                                "route": {"layer": [0], "evaluate_notes": 4}, "serve": {"calibration_requests": 8},
                                                "evaluate": {"notes": 3, "questions": 4, "adversarial_requests": 1}})
    source = _plant(project)
    (source.parent / "canaries.txt").write_text("\n".join(CANARIES) + "\n")
    caplog.set_level(logging.DEBUG)
    pipeline_flow(root=str(project))

    outside_phi_zone = [p for p in project.rglob("*") if p.is_file() and not {"raw", ".git", ".dvc"} & set(p.relative_to(project).parts)]
    assert any(p.suffix == ".parquet" for p in outside_phi_zone) and (project / "mlflow.db") in outside_phi_zone
    leaks = [str(p.relative_to(project)) for p in outside_phi_zone
             if any(c.lower().encode() in p.read_bytes().lower() for c in CANARIES)]
    assert leaks == []

    logs = caplog.text
    leaked_lines = [line for line in logs.splitlines() if any(c.lower() in line.lower() for c in CANARIES)]
    assert "deidentify" in logs and leaked_lines == []

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    params = json.dumps([r.data.params for r in runs] + [r.data.tags for r in runs])
    assert runs and not any(c.lower() in params.lower() for c in CANARIES)

    broken = project / "broken.jsonl"
    broken.write_text(json.dumps({"note_id": "1", "body": f"Dr. {CANARY_NAME}"}) + "\n" + f"{{oops {CANARY_MRN}\n")
    with pytest.raises(CorpusFormatError, match="line 1: field 'text'") as error:
        read_corpus(broken)
    assert not any(c in str(error.value) for c in CANARIES) and source.exists()
