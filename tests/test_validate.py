import pandas as pd
import pytest

from tasks.params import SplitFractions, ValidateParams
from tasks.validate.split import patients_crossing_splits, split_by_patient
from tasks.validate.suite import gate_failure_message, run_suite


def corpus(texts):
    return pd.DataFrame({
        "note_id": [f"n{i}" for i in range(len(texts))],
        "patient_id": [f"p{i % 3}" for i in range(len(texts))],
        "text": texts, "target": ["A short summary."] * len(texts),
        "specialty": "Urology", "expert": "renal_uro",
    })


def test_ssn_left_in_fails_the_gate_naming_row_and_expectation_not_value(tmp_path):
    ssn = "312-44-1234"
    notes = corpus(["Clean note about a kidney stone, nothing else." * 2,
                    f"Patient SSN {ssn} was left in this note by mistake." * 2])
    outcome = run_suite(notes, ValidateParams(), ["renal_uro"], tmp_path / "gx")
    assert not outcome.success
    message = gate_failure_message(outcome, notes, "data/deid/notes.parquet")
    assert "expect_column_values_to_not_match_regex[ssn] on column 'text'" in message
    assert "row 1 (note n1)" in message
    assert ssn not in message and "312" not in message
    stored = "".join(p.read_text(errors="ignore") for p in (tmp_path / "gx").rglob("*") if p.is_file())
    assert ssn not in stored


def test_clean_corpus_passes_and_unknown_expert_fails(tmp_path):
    notes = corpus(["A note with surrogate phone (312) 555-0142 and SSN 912-34-5678 only." * 2] * 3)
    assert run_suite(notes, ValidateParams(), ["renal_uro"], tmp_path / "gx").success
    outcome = run_suite(notes, ValidateParams(), ["cardiopulmonary"], tmp_path / "gx")
    assert outcome.failed == ["expect_column_values_to_be_in_set on column 'expert'"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_never_puts_a_patient_in_two_splits(seed):
    rows = [{"note_id": f"n{i}", "patient_id": f"p{i % 17}", "expert": ["a", "b", "c"][i % 3]} for i in range(120)]
    notes = pd.DataFrame(rows)
    splits = split_by_patient(notes, SplitFractions(train=0.8, val=0.1, test=0.1), seed)
    assert sum(len(s) for s in splits.values()) == len(notes)
    assert patients_crossing_splits(splits) == set()
    assert all(len(splits[name]) > 0 for name in ("train", "val", "test"))


def test_a_small_expert_still_gets_training_notes():
    notes = pd.DataFrame([{"note_id": f"n{i}", "patient_id": f"p{i}", "expert": "rare"} for i in range(3)])
    for seed in range(10):
        splits = split_by_patient(notes, SplitFractions(train=0.8, val=0.1, test=0.1), seed)
        assert len(splits["train"]) >= 1


def test_rows_failing_length_bounds_are_quarantined_with_row_and_expectation():
    from tasks.validate.quarantine import quarantine_failing_rows

    notes = corpus(["Long enough clinical note text for the check." * 2, "too short", "Another long note." * 4])
    notes["source_row"] = [1, 2, 3]
    notes.loc[2, "target"] = "x" * 500
    kept, quarantined = quarantine_failing_rows(notes, ValidateParams())
    assert len(kept) + len(quarantined) == len(notes) and list(kept["note_id"]) == ["n0"]
    reasons = list(quarantined["reason"])
    assert reasons[0].startswith("row 2 (note n1): expect_column_value_lengths_to_be_between on column 'text'")
    assert "column 'target'" in reasons[1] and "too short" not in " ".join(reasons)
