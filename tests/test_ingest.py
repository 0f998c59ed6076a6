import json

import pandas as pd
import pytest

from tasks.ingest.read_notes import InputFileError, ingest_notes
from tasks.params import ColumnMapping, load_params

from .conftest import PROJECT, shared_corpus

MTSAMPLES_COLUMNS = ColumnMapping(note_id="note_id", patient_id=None, text="transcription",
                                  specialty="medical_specialty", target="description")


def experts():
    return load_params(PROJECT).expert_for_specialty()


def test_mtsamples_like_csv_maps_columns_and_quarantines_the_rest(tmp_path):
    rows = [
        {"note_id": 1, "description": "Chest pain.", "medical_specialty": "Cardiovascular / Pulmonary",
         "sample_name": "x", "transcription": "HPI: chest pain, with commas, and \"quotes\".", "keywords": "k"},
        {"note_id": 2, "description": "Knee pain.", "medical_specialty": "Orthopedic", "sample_name": "y",
         "transcription": "Knee pain\nover two lines.", "keywords": ""},
        {"note_id": 3, "description": "Rash.", "medical_specialty": "Dermatology", "sample_name": "z",
         "transcription": "Rash on arm.", "keywords": ""},
        {"note_id": 4, "description": "Empty.", "medical_specialty": "Urology", "sample_name": "w",
         "transcription": "", "keywords": ""},
    ]
    path = tmp_path / "mtsamples.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    result = ingest_notes(path, "auto", MTSAMPLES_COLUMNS, experts())
    assert result.counts == {"read": 4, "kept": 2, "quarantined": 2}
    kept = result.kept.set_index("note_id")
    assert kept.loc["1", "expert"] == "cardiopulmonary" and kept.loc["2", "expert"] == "orthopedic"
    assert kept.loc["2", "text"] == "Knee pain\nover two lines."
    assert kept.loc["1", "patient_id"] == "note-1"  # no patient column: each note is its own patient
    reasons = dict(zip(result.quarantined["source_row"], result.quarantined["reason"]))
    assert "row 3, column 'medical_specialty'" in reasons[3] and "Dermatology" in reasons[3]
    assert "row 4, column 'transcription'" in reasons[4]


def test_real_mtsamples_runs_with_params_only():
    path = shared_corpus("mtsamples/mtsamples.csv")
    result = ingest_notes(path, "auto", MTSAMPLES_COLUMNS, experts())
    counts = result.counts
    assert counts["read"] == counts["kept"] + counts["quarantined"]
    assert set(result.kept["expert"]) == set(load_params(PROJECT).experts)
    assert result.reasons()["empty_text"] == 33


def test_missing_column_names_file_and_mapping(tmp_path):
    path = tmp_path / "notes.csv"
    pd.DataFrame({"note_id": [1], "body": ["text"], "medical_specialty": ["Urology"], "description": ["d"]}).to_csv(path, index=False)
    with pytest.raises(InputFileError) as error:
        ingest_notes(path, "auto", MTSAMPLES_COLUMNS, experts())
    message = str(error.value)
    assert str(path) in message and "'transcription' (input.columns.text)" in message


def test_broken_jsonl_lines_and_duplicate_ids_are_quarantined_with_line_numbers(tmp_path):
    good = {"note_id": "a", "patient_id": "p", "text": "Some note.", "specialty": "Urology", "target": "t"}
    lines = [json.dumps(good), "{not json", json.dumps({**good, "target": ""}), json.dumps(good), "[1, 2]"]
    path = tmp_path / "notes.jsonl"
    path.write_text("\n".join(lines) + "\n")
    columns = ColumnMapping(note_id="note_id", patient_id="patient_id", text="text", specialty="specialty", target="target")
    result = ingest_notes(path, "auto", columns, experts())
    assert result.counts == {"read": 5, "kept": 1, "quarantined": 4}
    assert result.reasons() == {"not_json_object": 2, "empty_target": 1, "duplicate_note_id": 1}
    assert any("line 4, column 'note_id'" in r and "line 1" in r for r in result.quarantined["reason"])


def test_file_that_is_not_parquet_gets_a_clear_error(tmp_path):
    path = tmp_path / "notes.parquet"
    path.write_text("this is not parquet")
    columns = ColumnMapping(note_id="id", text="t", specialty="s", target="g")
    with pytest.raises(InputFileError, match=r"notes\.parquet: cannot be read as parquet"):
        ingest_notes(path, "auto", columns, experts())
    with pytest.raises(InputFileError, match="cannot tell the format"):
        ingest_notes(tmp_path / "notes.xlsx", "auto", columns, experts())
