"""Drift monitoring: derived features of the notes, Evidently's verdict on them, and a drifted corpus that
gets its report (file, MLflow, Prefect) and keeps a candidate out of promotion with the reason in the gate's table."""

from __future__ import annotations

import json
import shutil

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from tasks.corpus.generate import generate_corpus
from tasks.drift.features import FEATURES, feature_table
from tasks.drift.summary import DRIFT_DIR, HTML_FILE, Reference, read_summary
from tasks.params import DriftParams

from .conftest import PROJECT

MODEL = "medlora-expert-cardiopulmonary"


def notes_frame(count: int, seed: int) -> pd.DataFrame:
    return pd.DataFrame([{"note_id": n.note_id, "patient_id": n.patient_id, "text": n.text, "specialty": n.specialty,
                          "target": n.target} for n in generate_corpus(notes=count, patients=count * 2 // 5, seed=seed)])


def one_specialty(notes: pd.DataFrame) -> pd.DataFrame:
    """The same number of notes, all of the first note's specialty (a clinic that now sends one kind of note)."""
    same = notes[notes["specialty"] == notes["specialty"].iloc[0]]
    return same.sample(len(notes), replace=True, random_state=0).reset_index(drop=True)


def five_times_longer(notes: pd.DataFrame) -> pd.DataFrame:
    return notes.assign(text=notes["text"].map(lambda text: "\n".join([text] * 5)))


@pytest.fixture(scope="module")
def corpora() -> dict[str, pd.DataFrame]:
    reference = notes_frame(150, seed=13)
    fresh = notes_frame(150, seed=29)  # other patients and notes from the same generator: no drift
    return {"reference": reference.iloc[:120], "fresh": fresh,
            "one specialty": one_specialty(fresh), "five times longer": five_times_longer(fresh)}


REFERENCE = Reference(MODEL, "1", "0123456789abcdef.dir")


def test_features_are_numbers_and_the_specialty_never_the_text(corpora):
    notes = corpora["fresh"].head(20)
    features = feature_table(notes)
    assert list(features.columns) == FEATURES and len(features) == len(notes)
    assert (features["chars"] == notes["text"].str.len().to_numpy()).all()
    assert not any(features[c].dtype == object for c in FEATURES[1:])
    assert all(0 <= share <= 1 for share in features["unknown_word_share"])
    texts = set(notes["text"])
    assert not any(value in texts for value in features.astype(str).to_numpy().ravel())

    garbled = feature_table(notes.assign(text=notes["text"] + " qzxv blorptane wugglex frabnitz"))
    assert (garbled["unknown_word_share"] > features["unknown_word_share"]).all()
    plain = feature_table(pd.DataFrame({"text": ["The patient walked home and felt fine."], "specialty": ["Orthopedic"]}))
    assert plain.loc[0, "unknown_word_share"] == 0 and plain.loc[0, "rare_word_share"] == 0 and plain.loc[0, "words"] == 7


def test_notes_from_the_same_source_do_not_drift_but_one_specialty_or_fivefold_length_does(corpora):
    from tasks.drift.report import compare

    reference = feature_table(corpora["reference"])
    settings = DriftParams()
    fresh, _ = compare(feature_table(corpora["fresh"]), reference, REFERENCE, settings, "v2")
    assert fresh.status == "no drift" and not fresh.blocking, fresh.reason
    assert {c.column for c in fresh.columns} == set(FEATURES)

    narrowed, _ = compare(feature_table(corpora["one specialty"]), reference, REFERENCE, settings, "v3")
    assert narrowed.status == "drift" and narrowed.blocking
    assert "specialty" in narrowed.drifted_columns and "specialty (chisquare " in narrowed.reason
    assert f"{MODEL} v1" in narrowed.reason

    longer, _ = compare(feature_table(corpora["five times longer"]), reference, REFERENCE, settings, "v4")
    assert longer.blocking and {"chars", "words"} <= set(longer.drifted_columns)
    assert "specialty" not in longer.drifted_columns  # the mix of specialties is the fresh corpus's
    assert longer.drift_share >= settings.drift_share

    # a higher bar for the share of drifted columns lets two of five through; block_promotion: false reports only
    tolerant, _ = compare(feature_table(corpora["five times longer"]), reference, REFERENCE,
                          DriftParams(drift_share=0.6), "v4")
    assert tolerant.status == "no drift" and not tolerant.blocking and set(tolerant.drifted_columns) == set(longer.drifted_columns)
    reported, _ = compare(feature_table(corpora["five times longer"]), reference, REFERENCE,
                          DriftParams(block_promotion=False), "v4")
    assert reported.status == "drift" and not reported.blocking and "not blocking" in reported.reason


def test_a_per_column_setting_for_a_column_that_is_no_feature_says_which_are(corpora):
    from tasks.drift.report import compare

    features = feature_table(corpora["fresh"].head(20))
    with pytest.raises(ValueError, match="drift.per_column_threshold.*'length'.*the features are"):
        compare(features, features, REFERENCE, DriftParams(per_column_threshold={"length": 0.1}), "v1")


# --- the stage, MLflow, Prefect and the promotion gate, end to end ------------------------------------------------

@pytest.fixture
def project(tmp_path):
    """A project directory with our params.yaml (MLflow and the review store in it); restores MLflow's URIs."""
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    shutil.copy(PROJECT / "params.yaml", tmp_path / "params.yaml")
    yield tmp_path
    mlflow.set_tracking_uri(previous[0])
    mlflow.set_registry_uri(previous[1])


def validated(root, notes: pd.DataFrame, data_version: str) -> None:
    """What the validate stage leaves: the splits, and dvc.lock recording their version (as DVC writes it)."""
    out = root / "data" / "validated"
    out.mkdir(parents=True, exist_ok=True)
    train, val = int(len(notes) * 0.8), int(len(notes) * 0.9)
    for name, part in (("train", notes.iloc[:train]), ("val", notes.iloc[train:val]), ("test", notes.iloc[val:])):
        part.to_parquet(out / f"{name}.parquet", index=False)
    lock = {"schema": "2.0", "stages": {"validate": {"cmd": "medlora stage validate",
                                                    "outs": [{"path": "data/validated", "md5": data_version}]}}}
    (root / "dvc.lock").write_text(json.dumps(lock))


def register_champion(client: MlflowClient, root, data_version: str) -> None:
    """Version 1, trained on `data_version`, promoted on an evaluation where its perplexity was 20; version 2 is
    the candidate."""
    with mlflow.start_run(run_name="evaluation") as run:
        mlflow.log_metric(f"{MODEL}/1/perplexity", 20.0)
    client.create_registered_model(MODEL)
    client.create_model_version(MODEL, source=str(root), tags={"dvc_data_version": data_version,
                                                               "evaluation_run": run.info.run_id})
    client.create_model_version(MODEL, source=str(root), tags={"dvc_data_version": "candidate-data.dir"})
    client.set_registered_model_alias(MODEL, "champion", "1")


def evaluated_and_approved(root, params) -> None:
    """The evaluate stage's output for candidate v2 (better than the base model and champion v1 on today's
    requests, and than v1 was when promoted) and a reviewer approving its outputs: only drift can keep it out."""
    from tasks.evaluate.stage import EVALUATION_DIR, EVALUATION_FILE
    from tasks.review.project import open_store
    from tasks.review.store import QueueItem

    candidate = {"model": MODEL, "version": "2", "key": f"{MODEL}/2", "scope": "cardiopulmonary",
                 "metrics": {"perplexity": 15.0, "critical_error_rate": 0.0}, "base_metrics": {"perplexity": 40.0},
                 "champion": {"version": "1", "metrics": {"perplexity": 19.0}}}
    (root / EVALUATION_DIR).mkdir(parents=True, exist_ok=True)
    (root / EVALUATION_DIR / EVALUATION_FILE).write_text(json.dumps({"batch": "batch-1", "candidates": [candidate]}))
    store = open_store(params, root)
    [item] = store.enqueue("batch-1", [QueueItem(candidate=candidate["key"], model=MODEL, version="2", request_id="N00001",
                                                 input_text="(de-identified note)", output_text="summary", reference="")])
    store.add_reviewer("clinician", "not-a-secret")
    store.decide(item, "clinician", "approve")


def test_a_drifted_corpus_gets_its_report_and_keeps_the_candidate_out_until_the_notes_look_like_the_champions(
        project, corpora, prefect_api):
    from flows.drift import drift_flow
    from flows.promote import promote_flow
    from tasks.params import load_params

    root = project
    # 1. The champion's training notes pass the drift stage first: nothing to compare with yet, nothing blocks.
    validated(root, corpora["reference"], "aaaa1111.dir")
    first = drift_flow(root=str(root))
    baseline = read_summary(root)
    assert first.stage == "drift" and baseline["status"] == "no reference" and not baseline["blocking"]
    assert "no model under 'medlora' has a champion" in baseline["reason"]
    assert (root / DRIFT_DIR / HTML_FILE).stat().st_size > 0
    client = MlflowClient()
    register_champion(client, root, "aaaa1111.dir")

    # 2. Incoming notes of one specialty only: the report says so, the flow run needs attention ...
    validated(root, corpora["one specialty"], "bbbb2222.dir")
    state = drift_flow(root=str(root), return_state=True)
    summary = read_summary(root)
    assert state.is_completed() and state.name == "Attention", state
    assert summary["blocking"] and "specialty" in summary["drifted_columns"] and "specialty" in state.message
    assert summary["reference"] == {"model": MODEL, "version": "1", "data_version": "aaaa1111.dir",
                                    "run_id": baseline["mlflow_run_id"], "notes": int(len(corpora["reference"]) * 0.8)}
    html = (root / DRIFT_DIR / HTML_FILE).read_text()
    assert "specialty" in html and corpora["one specialty"]["text"].iloc[0][:60] not in html
    run = client.get_run(summary["mlflow_run_id"])
    assert run.data.tags["medlora.drift_blocking"] == "true" and run.data.metrics["drift_share"] >= 0.2
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)} | {
        a.path for a in client.list_artifacts(run.info.run_id, "drift")}
    assert {"drift/report.html", "drift_columns.json", "drift_summary.json", "features"} <= artifacts
    table = mlflow.load_table("drift_columns.json", run_ids=[run.info.run_id])
    assert set(table["column"]) == set(FEATURES) and table.set_index("column").loc["specialty", "drifted"]

    # ... and the gate keeps the candidate out for that reason alone, in its decision table.
    params = load_params(root)
    evaluated_and_approved(root, params)
    state = promote_flow(root=str(root), return_state=True)
    [row] = state.result()
    assert state.name == "Attention" and "data drift" in state.message and row["decision"] == "keep out"
    promotion = mlflow.search_runs(filter_string="tags.`medlora.stage` = 'promote'", order_by=["start_time DESC"]).iloc[0]
    decision = mlflow.load_table("promotion_decision.json", run_ids=[promotion.run_id])
    failed = decision[~decision["passed"].astype(bool)]
    assert list(failed["name"]) == ["data drift"] and "specialty" in failed["detail"].iloc[0]
    assert "perplexity drift since champion v1" in set(decision["name"])  # 15 now against 20 when v1 was promoted
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "1"

    # 3. Fresh notes like the champion's: no drift, and the same candidate is promoted.
    validated(root, corpora["fresh"], "cccc3333.dir")
    state = drift_flow(root=str(root), return_state=True)
    assert state.name == "Completed" and not read_summary(root)["blocking"], read_summary(root)["reason"]
    state = promote_flow(root=str(root), return_state=True)
    assert state.name == "Completed" and state.result()[0]["decision"] == "promote", state.result()
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "2"


def test_a_pipeline_run_whose_drift_check_blocks_ends_in_attention_with_the_reason(tmp_path, prefect_api):
    from prefect import flow, get_run_logger

    from flows.pipeline import final_state
    from tasks.drift.summary import DriftSummary
    from tasks.stages import StageReport

    reports = [StageReport(stage="drift", seconds=1.0)]

    @flow
    def pipeline_end(blocking: bool):
        DriftSummary(status="drift" if blocking else "no drift", blocking=blocking, reason="specialty drifted",
                     data_version="abc", current_notes=10).write(tmp_path)
        return final_state(tmp_path, reports, get_run_logger())

    blocked = pipeline_end(True, return_state=True)
    assert blocked.is_completed() and blocked.name == "Attention"
    assert blocked.message == "drift blocks promotion: specialty drifted"
    assert [r.stage for r in blocked.result()] == ["drift"]
    passed = pipeline_end(False, return_state=True)
    assert passed.name == "Completed" and [r.stage for r in passed.result()] == ["drift"]
