import re

import pandas as pd
import pytest

from tasks.deidentify.engine import deidentify_notes
from tasks.deidentify.surrogates import PatientSurrogates
from tasks.params import DeidentifyParams
from tasks.validate.residual_phi import RESIDUAL_PHI_PATTERNS

KEY = b"test-key-0123456789"


@pytest.fixture(scope="module")
def deidentified(deid_params, sample_corpus):
    notes = pd.DataFrame([
        {"note_id": n.note_id, "patient_id": n.patient_id, "text": n.text, "target": n.target,
         "specialty": n.specialty, "expert": "any", "source_row": i}
        for i, n in enumerate(sample_corpus)
    ])
    out, stats = deidentify_notes(notes, deid_params, KEY, progress=False)
    return notes, out, stats


def _shifted_elsewhere(value, note, shifter):
    """A date can legitimately reappear as the shifted form of another date of the same note."""
    return any(shifter.shift_date(s.text) == value for s in note.spans if s.entity_type == "DATE" and s.text != value)


def test_deidentified_corpus_contains_no_gold_phi_string(deidentified, sample_corpus):
    notes, out, _ = deidentified
    leaks = []
    for note, text in zip(sample_corpus, out["text"]):
        shifter = PatientSurrogates(KEY, note.patient_id, DeidentifyParams().date_shift_days, set())
        for span in note.spans:
            pattern = rf"(?<![A-Za-z0-9]){re.escape(span.text)}(?![A-Za-z0-9])"
            if span.entity_type == "AGE":  # a bare number like 93 may occur elsewhere (a surrogate IP)
                pattern = rf"\b{span.text}-year-old"
            if re.search(pattern, text, re.I) and not (span.entity_type == "DATE" and _shifted_elsewhere(span.text, note, shifter)):
                leaks.append((note.note_id, span.entity_type))
    assert leaks == [], leaks


def test_ids_are_pseudonymised_and_counts_preserved(deidentified):
    notes, out, stats = deidentified
    assert len(out) == len(notes) == stats["notes"]
    assert not set(out["note_id"]) & set(notes["note_id"])
    assert not set(out["patient_id"]) & set(notes["patient_id"])
    assert out.groupby("patient_id").ngroups == notes.groupby("patient_id").ngroups


def test_same_patient_gets_same_surrogate_name(deid_params):
    notes = pd.DataFrame([
        {"note_id": "1", "patient_id": "p1", "text": "PATIENT: Harold Finch\nMr. Finch reports pain.", "target": "t",
         "specialty": "s", "expert": "e", "source_row": 1},
        {"note_id": "2", "patient_id": "p1", "text": "Seen by Dr. Root. Mr. Finch improved.", "target": "t",
         "specialty": "s", "expert": "e", "source_row": 2},
    ])
    out, _ = deidentify_notes(notes, deid_params, KEY, progress=False)
    first = re.search(r"Mr\. (\w+) reports", out["text"][0]).group(1)
    second = re.search(r"Mr\. (\w+) improved", out["text"][1]).group(1)
    assert first == second != "Finch"
    assert "Finch" not in " ".join(out["text"]) and "Root" not in out["text"][1]


def test_date_shift_keeps_intervals_and_old_ages_become_90_plus():
    surrogates = PatientSurrogates(KEY, "p9", (-365, -30), set())
    first, second = surrogates.shift_date("03/01/2020"), surrogates.shift_date("03/11/2020")
    gap = pd.Timestamp(second) - pd.Timestamp(first)
    assert gap.days == 10 and first != "03/01/2020"
    assert surrogates.surrogate("AGE", "93") == "90+" and surrogates.surrogate("AGE", "39") == "39"


def test_structured_surrogates_never_look_like_real_identifiers():
    surrogates = PatientSurrogates(KEY, "p2", (-365, -30), set())
    for entity, value in [("US_SSN", "123-45-6789"), ("PHONE_NUMBER", "(312) 444-1234"),
                          ("EMAIL_ADDRESS", "jane.doe@gmail.com"), ("URL", "https://portal.acme.org/x"),
                          ("IP_ADDRESS", "73.12.1.4")]:
        surrogate = surrogates.surrogate(entity, value)
        assert all(not re.search(p, surrogate) for p in RESIDUAL_PHI_PATTERNS.values()), (entity, surrogate)
        assert any(re.search(p, value) for p in RESIDUAL_PHI_PATTERNS.values()), value
