"""The shipped PHI token model, its training (re-synthesis, stacker, added notes), cross-validation, and the
deidentify stage's refusal to run without it."""

import json
import random
import re
import shutil

import pytest
import yaml

from tasks.deidentify.corpora import GoldNote, GoldSpan, read_corpus
from tasks.deidentify.resynthesis import resynthesize
from tasks.params import DeidentifyParams, DeidModelParams, DeidSource, load_params

from .conftest import PROJECT, SHIPPED_DEID_MODEL, make_project


def test_the_default_params_use_the_shipped_model_and_its_card_says_how_it_was_made():
    from tasks.deidentify.engine import load_token_model

    params = load_params(PROJECT).deidentify
    assert (PROJECT / params.model.path) == SHIPPED_DEID_MODEL and params.use_model
    model = load_token_model(SHIPPED_DEID_MODEL)
    assert model.stacker is not None and 0 < model.threshold <= 0.5
    card = (SHIPPED_DEID_MODEL.parent / "MODEL_CARD.md").read_text()
    for needed in ("physionet-deid", "synth_dataset_v2.json", "medlora deid train", "Threshold", "medlora deid cv --folds 5"):
        assert needed in card
    assert SHIPPED_DEID_MODEL.stat().st_size < 5_000_000


def test_shipped_model_finds_phi_in_a_note_it_never_saw():
    from tasks.deidentify.engine import PhiDetector

    text = ("Pt seen by Dr. Harold Finch on 7/22. Wife Margaret at bedside, will call 410-555-2381. "
            "Transfer to UNION HOSP planned. BP 120/80, pain 3/10.")
    [spans] = PhiDetector(DeidentifyParams(model=DeidModelParams(path=str(SHIPPED_DEID_MODEL)))).detect([text], progress=False)
    found = " | ".join(text[s.start : s.end] for s in spans)
    for phi in ("Finch", "7/22", "Margaret", "410-555-2381", "UNION"):
        assert phi in found
    assert "120/80" not in found and "3/10" not in found


def test_missing_model_stops_the_deidentify_stage_naming_the_path_and_the_fix(tmp_path, prefect_api):
    from flows.pipeline import run_stage

    project = make_project(tmp_path)
    shutil.rmtree(project / "models" / "deid")
    run_stage("corpus", project)
    run_stage("ingest", project)
    with pytest.raises(FileNotFoundError) as error:
        run_stage("deidentify", project)
    message = str(error.value)
    assert "models/deid/token_model.joblib" in message and "medlora deid train" in message
    assert "use_model: false" in message and not (project / "data" / "deid").exists()


def test_resynthesized_copy_holds_other_phi_of_the_same_form_and_keeps_the_rest():
    text = "Seen by Dr. JONES on 10/14/82 and 7/2. Son Mark called from Baltimore. PMH MI '92."
    gold = [("JONES", "HCPName"), ("10/14/82", "Date"), ("7/2", "Date"), ("Mark", "RelativeProxyName"),
            ("Baltimore", "Location"), ("'92", "DateYear")]
    spans = [GoldSpan(text.index(value), text.index(value) + len(value), kind) for value, kind in gold]
    note = GoldNote("n1", text, "p1", spans)
    copy = resynthesize(note, random.Random(3), case_flip=0.0)
    values = [copy.text[s.start : s.end] for s in copy.spans]
    assert [s.entity_type for s in copy.spans] == [s.entity_type for s in spans]
    assert all(new != text[s.start : s.end] for new, s in zip(values, spans))
    assert values[0].isupper() and values[3].istitle() and values[4].istitle()
    assert re.fullmatch(r"\d{1,2}/\d{1,2}/\d{2}", values[1]) and re.fullmatch(r"\d{1,2}/\d{1,2}", values[2])
    month, day = map(int, values[1].split("/")[:2])
    assert 1 <= month <= 12 and 1 <= day <= 31 and re.fullmatch(r"'\d{2}", values[5])
    outside = re.sub("|".join(re.escape(v) for v in values), "#", copy.text)
    assert outside == "Seen by Dr. # on # and #. Son # called from #. PMH MI #."
    assert copy.split_group == note.split_group  # a copy stays in its patient's fold


def test_training_refuses_missing_corpora_unless_told(tmp_path):
    from tasks.deidentify.training import check_sources

    params = DeidModelParams(sources=[DeidSource(format="synthetic"), DeidSource(path="absent/physionet", format="physionet")],
                             vocabulary=["absent/words.csv"])
    with pytest.raises(FileNotFoundError, match=r"absent/physionet, .*absent/words.csv not found.*--skip-missing"):
        check_sources(params, tmp_path, skip_missing=False)
    check_sources(params, tmp_path, skip_missing=True)


def _annotated_notes(path, count: int, seed: int) -> None:
    """A hospital's annotated notes in the JSONL format `deid evaluate` reads, written by our own generator."""
    from tasks.corpus.generate import generate_corpus

    with path.open("w") as handle:
        for note in generate_corpus(notes=count, patients=count // 2, seed=seed):
            handle.write(json.dumps({"note_id": note.note_id, "patient_id": note.patient_id, "text": note.text.upper(),
                                     "spans": [{"start": s.start, "end": s.end, "entity_type": s.entity_type} for s in note.spans]}) + "\n")


def test_cross_validation_pools_every_corpus_out_of_fold_and_training_adds_hospital_notes(tmp_path):
    from flows.cli import main
    from tasks.deidentify.training import train_and_save, with_added_notes

    hospital = tmp_path / "hospital.jsonl"
    _annotated_notes(hospital, 24, seed=9)
    model = {"path": "model/token_model.joblib", "threshold_folds": 2, "iterations": 15,
             "sources": [{"format": "synthetic", "notes": 24, "seed": 5, "resynthesis": 1, "calibrate": True}]}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({
        "input": {"path": "x.jsonl", "columns": {"note_id": "id", "text": "t", "specialty": "s", "target": "g"}},
        "experts": {"any": ["x"]}, "deidentify": {"model": model}}))
    assert main(["--root", str(tmp_path), "deid", "cv", "--folds", "2", "--workers", "2", "--add", str(hospital),
                 "--report", "cv.json"]) == 0
    report = json.loads((tmp_path / "cv.json").read_text())
    assert set(report["corpora"]) == {"synthetic:24", str(hospital)} and len(report["thresholds"]) == 2
    gold_tokens = sum(len(re.findall(r"[A-Za-z0-9]+", n.text[s.start : s.end])) for n in read_corpus(hospital) for s in n.spans)
    hospital_scores = report["corpora"][str(hospital)]
    assert hospital_scores["phi_tokens"] == gold_tokens  # every note scored once, by the fold that never saw it
    assert hospital_scores["recall"] > 0.8
    assert all(r["resynthesized_copies"] > 0 for r in report["fold_reports"])

    params = with_added_notes(DeidentifyParams(model=DeidModelParams(**model)), [hospital])
    trained = train_and_save(params, tmp_path, progress=False)
    assert trained["sources"] == {"synthetic:24": {"notes": 24, "resynthesized_copies": 24},
                                  str(hospital): {"notes": 24, "resynthesized_copies": 0}}
    card = (tmp_path / "model" / "MODEL_CARD.md").read_text()
    assert str(hospital) in card and "No cross-validation report" in card
