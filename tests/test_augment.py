"""The augment stage on the tiny project: synthetic examples for the rare experts, screened for PHI, support and
leakage into evaluation, with their provenance carried to the training set, the adapters' reports and MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tasks.augment.filters import REASONS, HeldOut, max_rouge_l, screen
from tasks.augment.methods import PROVENANCE_COLUMNS, reordered_sections, swapped_abbreviations
from tasks.params import load_params
from tasks.validate.duplicates import near_duplicates_of
from tests.conftest import project_mlflow


def _augmented(project) -> pd.DataFrame:
    return pd.read_parquet(project / "data" / "augmented" / "train.parquet")


def _heldout_notes(project) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(project / "data" / "validated" / f"{split}.parquet") for split in ("val", "test")])


def _heldout(project) -> list[str]:
    return list(_heldout_notes(project)["text"])


def test_rare_experts_get_synthetic_examples_whose_provenance_reaches_training_and_mlflow(finished_project):
    project, _, _ = finished_project
    params = load_params(project)
    train = _augmented(project)
    synthetic = train[train["origin"] == "synthetic"]
    assert len(synthetic) and set(synthetic["expert"]) <= set(params.experts)
    assert (train[train["origin"] == "real"]["method"] == "real").all()
    assert synthetic[PROVENANCE_COLUMNS].notna().all().all() and synthetic["note_id"].str.startswith("syn-").all()
    by_model = synthetic[synthetic["method"] != "section_reorder"]
    assert (by_model["generator"] == "base:tiny-random").all() and (by_model["seed"] >= 0).all()
    assert by_model["prompt_id"].str.contains(":").all() and (by_model["generator_version"].str.len() == 16).all()

    report = json.loads((project / "reports" / "augment.json").read_text())
    assert report["records_out"] == len(train) and report["metrics"]["synthetic_examples"] == len(synthetic)
    rejected = pd.read_parquet(project / "data" / "augmented" / "rejected.parquet")
    assert "text" not in rejected and "target" not in rejected and set(rejected["reason"]) <= set(REASONS)

    client = project_mlflow(project)
    experiments = [e.experiment_id for e in client.search_experiments()]
    [run] = client.search_runs(experiments, "tags.`medlora.stage` = 'augment'")
    assert run.data.params["generator"] == "base:tiny-random" and run.data.metrics["synthetic_examples"] == len(synthetic)
    for expert in set(synthetic["expert"]):
        counts = {k.removeprefix(f"{expert}_"): v for k, v in run.data.metrics.items() if k.startswith(f"{expert}_")}
        assert counts["candidates"] == counts["accepted"] + sum(counts[f"rejected_{r}"] for r in REASONS)
        assert counts["accepted"] == (synthetic["expert"] == expert).sum()
        # a training note near a held-out note is not varied: at most one new summary per other training note
        by_source = rejected[(rejected["expert"] == expert) & (rejected["method"] == "back_summaries")]
        from_sources = (synthetic["expert"] == expert) & (synthetic["method"] == "back_summaries")
        assert len(by_source) + from_sources.sum() <= counts["real"] - counts["sources_near_heldout"]
    (scratch := project / "scratch").mkdir(exist_ok=True)
    logged = json.loads(Path(client.download_artifacts(run.info.run_id, "synthetic_examples.json", str(scratch))).read_text())
    assert {"origin", "method", "generator", "prompt_id", "seed"} <= set(logged["columns"]) and len(logged["data"]) == len(synthetic)

    # Each augmented expert was trained with and without its synthetic examples and kept one; its report and
    # registered run say which, and what the synthetic examples were.
    expert = synthetic["expert"].iloc[0]
    training = json.loads((project / "models" / "adapters" / expert / "training.json").read_text())
    assert training["data_provenance"]["synthetic_examples"] == (synthetic["expert"] == expert).sum()
    assert training["data_provenance"]["augmentation"].startswith(("kept", "dropped"))
    assert training["val_metrics"]["augmentation_kept"] in (0, 1)
    [expert_run] = client.search_runs(experiments, f"tags.`medlora.expert` = '{expert}' and tags.`medlora.stage` = 'finetune'")
    assert expert_run.data.params["train_data_synthetic_examples"] == str(training["data_provenance"]["synthetic_examples"])
    assert "section_reorder" in expert_run.data.params["train_data_synthetic_methods"] or \
        "back_summaries" in expert_run.data.params["train_data_synthetic_methods"]


def test_no_synthetic_example_is_near_a_validation_or_test_note(finished_project):
    project, _, _ = finished_project
    settings = load_params(project).augment
    train, heldout = _augmented(project), _heldout(project)
    synthetic = list(train[train["origin"] == "synthetic"]["text"])
    assert synthetic and heldout
    assert near_duplicates_of(synthetic, heldout, settings.leakage_similarity) == [[] for _ in synthetic]
    assert all(max_rouge_l(text, heldout) < settings.leakage_rouge_l for text in synthetic)


def test_the_screens_reject_a_copied_heldout_note_a_planted_identifier_an_unsupported_target_and_a_repeat(finished_project):
    from tasks.augment.stage import base_perplexity

    project, _, _ = finished_project
    params = load_params(project)
    validated = pd.read_parquet(project / "data" / "validated" / "train.parquet")
    # The generated corpus's notes share templates: take a training note that is itself clear of every held-out note.
    near = near_duplicates_of(list(validated["text"]), _heldout(project), params.augment.leakage_similarity)
    note = validated.iloc[next(i for i, found in enumerate(near) if not found and max_rouge_l(
        validated["text"].iloc[i], _heldout(project)) < params.augment.leakage_rouge_l)]
    expert = note["expert"]
    own = validated[validated["expert"] == expert]
    heldout = _heldout_notes(project).iloc[0]
    issued = lambda row: {"surrogate_ids": list(row["surrogate_ids"]), "surrogate_dates": list(row["surrogate_dates"])}  # noqa: E731
    base = {"expert": expert, "specialty": note["specialty"], **issued(note), "origin": "synthetic", "generator": "test",
            "generator_version": "", "prompt_id": "test:1", "seed": 0, "source_note_id": note["note_id"]}
    candidates = pd.DataFrame([
        base | issued(heldout) | {"method": "section_reorder", "text": heldout["text"], "target": heldout["target"]},
        base | {"method": "fewshot_notes", "text": note["text"] + "\nSSN: 123-45-6789", "target": note["target"]},
        base | {"method": "section_reorder", "text": note["text"] + "\nMRN: QX7731904", "target": note["target"]},
        base | {"method": "back_summaries", "text": note["text"], "target": "Started on imatinib for chronic myeloid leukemia."},
        base | {"method": "fewshot_notes", "text": note["text"], "target": note["target"]},
        base | {"method": "back_summaries", "text": note["text"], "target": note["target"]},
    ])
    kept, rejected = screen(candidates, own, HeldOut(_heldout(project), params.augment, params.seed), params.augment, params.validate_, [],
                            base_perplexity(params, project, None), params.seed)
    assert list(rejected["reason"]) == ["near_heldout", "residual_phi", "residual_phi", "unsupported", "near_training",
                                        "not_diverse"]
    assert kept.empty


def test_a_training_note_near_a_heldout_note_is_not_varied_and_the_others_are():
    from tasks.augment.stage import augment

    from .conftest import PROJECT

    sections = "CHIEF COMPLAINT: {0}\nHISTORY OF PRESENT ILLNESS: {0} for {1} days after a fall at home\nMEDICATIONS: none\nPLAN: rest"
    heldout = sections.format("knee pain", 3)
    other = ("REASON FOR VISIT: wrist swelling since lifting boxes in a warehouse last week\nEXAM: tender radial "
             "styloid, good grip strength\nIMPRESSION: radiographs show no fracture\nRECOMMENDATIONS: splint and ice")
    train = pd.DataFrame({"note_id": ["n1", "n2"], "patient_id": ["p1", "p2"], "expert": "orthopedic",
                          "specialty": "Orthopedic", "text": [heldout.replace("3", "4"), other],
                          "target": ["Knee pain.", "Wrist swelling."], "surrogate_ids": [[], []], "surrogate_dates": [[], []]})
    splits = {"train": train, "val": train.iloc[:0].assign(text=[], target=[]), "test": train.iloc[:1].assign(text=heldout)}
    params = load_params(PROJECT)
    params = params.model_copy(update={"augment": params.augment.model_copy(update={
        "min_train_notes": 5, "methods": ["section_reorder"], "max_synthetic_share": 0.9})})
    result = augment(params, Path("."), splits, [])
    assert result.counts["orthopedic"]["sources_near_heldout"] == 1 and result.counts["orthopedic"]["candidates"] == 1
    [variant] = result.train[result.train["origin"] == "synthetic"].itertuples()
    assert variant.source_note_id == "n2"


def test_rule_variants_reorder_sections_and_swap_abbreviations():
    import random

    note = "CHIEF COMPLAINT: cough\nHISTORY OF PRESENT ILLNESS: pt with sob\nMEDICATIONS: none\nALLERGIES: nkda\nPLAN: rest"
    reordered = reordered_sections(note, random.Random(0))
    assert reordered.startswith("CHIEF COMPLAINT: cough") and reordered != note
    assert sorted(reordered.splitlines()) == sorted(note.splitlines())
    assert reordered_sections("HPI: only one section", random.Random(0)) is None
    assert "patient with shortness of breath" in swapped_abbreviations(note)
    assert swapped_abbreviations("The patient has hypertension.") == "The pt has htn."


@pytest.mark.parametrize("keep", ["never", "always"])
def test_keep_never_or_always_trains_once_and_says_so(keep):
    from tasks.finetune.expert_data import provenance_summary

    synthetic = pd.DataFrame({"method": ["fewshot_notes", "back_summaries"], "generator": ["g", "g"], "generator_version": ["v", "v"]})
    summary = provenance_summary(synthetic, keep)
    assert summary["synthetic_examples"] == 2 and keep in summary["augmentation"]
    assert summary["synthetic_methods"] == "back_summaries: 1, fewshot_notes: 1" and summary["synthetic_generators"] == "g (v)"
