import csv
import re
import time

import pytest

from tasks.corpus.clinical_content import CONDITIONS
from tasks.corpus.generate import generate_corpus
from tasks.evaluate.adversarial import PERTURBATIONS, perturb
from tasks.evaluate.clinical_terms import CriticalError, clinical_mentions, critical_errors, unsupported_entities

from .conftest import shared_corpus


@pytest.fixture(scope="module")
def notes():
    return generate_corpus(notes=20, patients=10, seed=3)


def found(text: str) -> dict[str, tuple[str, bool]]:
    return {m.term: (m.kind, m.negated) for m in clinical_mentions(text)}


def test_mentions_have_kinds_spans_and_prefer_the_longest_term():
    text = "History of type 2 diabetes mellitus and atrial fibrillation on metformin, status post appendectomy."
    mentions = clinical_mentions(text)
    assert [(m.term, m.kind) for m in mentions] == [
        ("type 2 diabetes mellitus", "diagnosis"),
        ("atrial fibrillation", "diagnosis"),
        ("metformin", "drug"),
        ("appendectomy", "procedure"),
    ]
    assert all(text[m.start : m.end].lower() == m.term for m in mentions)


def test_mentions_are_normalised_across_case_hyphens_plurals_and_abbreviations():
    assert found("COMMUNITY-ACQUIRED PNEUMONIAS") == {"community acquired pneumonia": ("diagnosis", False)}
    assert found("Known COPD and CHF.") == {
        "chronic obstructive pulmonary disease": ("diagnosis", False),
        "heart failure": ("diagnosis", False),
    }
    # Words split by punctuation are not one term.
    assert "heart failure" not in found("Heart. Failure to thrive is unrelated.")


def test_morphology_finds_unlisted_terms_but_not_false_friends():
    assert found("Cholangitis treated with esmolol before nephrolithotomy.") == {
        "cholangitis": ("diagnosis", False),
        "esmolol": ("drug", False),
        "nephrolithotomy": ("procedure", False),
    }
    assert clinical_mentions("The diagnosis and prognosis, cholesterol program, placed in lithotomy position.") == []


def test_negation_scope_runs_to_the_clause_end_and_stops_at_but():
    mentions = found("Denies chest pain but reports palpitations. No fever, chills, or night sweats; cough is present.")
    assert mentions == {
        "chest pain": ("diagnosis", True),
        "palpitations": ("diagnosis", False),
        "fever": ("diagnosis", True),
        "chills": ("diagnosis", True),
        "night sweats": ("diagnosis", True),
        "cough": ("diagnosis", False),
    }
    assert found("Negative for appendicitis, however cholecystitis was seen.") == {
        "appendicitis": ("diagnosis", True),
        "cholecystitis": ("diagnosis", False),
    }


def test_cues_after_the_term_and_pseudo_negations():
    assert found("Pulmonary embolism was ruled out. Pneumonia ruled out.") == {
        "pulmonary embolism": ("diagnosis", True),
        "pneumonia": ("diagnosis", True),
    }
    assert found("No change in hypertension. Heart failure not ruled out.") == {
        "hypertension": ("diagnosis", False),
        "heart failure": ("diagnosis", False),
    }
    assert found("Given 0.4 mg tamsulosin without hematuria.")["hematuria"] == ("diagnosis", True)


SOURCE = (
    "Community-acquired pneumonia of the right lower lobe. Kidney stones. Patient denies chest pain. "
    "Medications: metoprolol tartrate 25 mg twice daily, ceftriaxone 1 g daily. History of COPD."
)


def test_faithful_paraphrase_has_no_critical_errors():
    summary = (
        "Community acquired pneumonias and a kidney stone in a man with chronic obstructive pulmonary disease, "
        "on METOPROLOL and antibiotics, no chest pain."
    )
    assert critical_errors(SOURCE, summary) == []


def test_hallucinated_drug_diagnosis_and_procedure_are_flagged_once_each():
    summary = "Pneumonia treated with warfarin; warfarin continued. Sepsis. Colonoscopy planned."
    assert critical_errors(SOURCE, summary) == [
        CriticalError("unsupported_drug", "warfarin"),
        CriticalError("unsupported_diagnosis", "sepsis"),
        CriticalError("unsupported_procedure", "colonoscopy"),
    ]
    assert unsupported_entities(SOURCE, summary) == ["warfarin", "sepsis", "colonoscopy"]


def test_negation_flip_is_flagged_in_both_directions():
    assert critical_errors(SOURCE, "He has chest pain.") == [CriticalError("negation_flip", "chest pain")]
    assert critical_errors(SOURCE, "No pneumonia.") == [CriticalError("negation_flip", "pneumonia")]
    assert unsupported_entities(SOURCE, "No pneumonia.") == []


def test_no_flip_when_some_source_occurrence_agrees():
    source = "No pneumonia on admission. Pneumonia developed on day three."
    assert critical_errors(source, "Pneumonia.") == []
    assert critical_errors(source, "No pneumonia at first.") == []


def test_every_generator_assessment_and_medication_is_recognised():
    for conditions in CONDITIONS.values():
        for condition in conditions:
            assessment = condition["assessment"]
            assert any(m.kind == "diagnosis" for m in clinical_mentions(assessment)), assessment
            for medication in condition["meds"]:
                drugs = [m.term for m in clinical_mentions(medication) if m.kind == "drug"]
                assert drugs and medication.lower().startswith(drugs[0].split()[0]), medication


def test_corpus_targets_are_supported_by_their_notes_and_a_planted_drug_is_not(notes):
    # Measured: no critical error of any kind in these 20 targets, nor in 300 notes of seed 1. The
    # bounds leave room for one new generator phrase; "arthroscopy" supported by "arthroscopic" was the
    # last error we fixed.
    kinds = {n.note_id: {e.kind for e in critical_errors(n.text, n.target)} for n in notes}
    unsupported_drug = [note_id for note_id, found_kinds in kinds.items() if "unsupported_drug" in found_kinds]
    flipped = [note_id for note_id, found_kinds in kinds.items() if "negation_flip" in found_kinds]
    assert len(unsupported_drug) <= 1, unsupported_drug
    assert len(flipped) <= 1, flipped
    assert all(clinical_mentions(n.target) for n in notes)
    for note in notes:
        assert "vancomycin" in unsupported_entities(note.text, note.target + " Started on vancomycin.")


def negations(text: str) -> list[tuple[str, bool]]:
    return [(m.term, m.negated) for m in clinical_mentions(text)]


def test_negation_flip_changes_exactly_one_mention(notes):
    texts = [n.text for n in notes[:8]] + [n.target for n in notes[:8]] + [SOURCE]
    for text in texts:
        for seed in range(3):
            before, after = negations(text), negations(perturb(text, "negation_flip", seed))
            assert [t for t, _ in before] == [t for t, _ in after]
            assert sum(b != a for (_, b), (_, a) in zip(before, after)) == 1, text


def test_negation_flip_removes_a_cue_or_inserts_one():
    assert perturb("Patient denies chest pain.", "negation_flip", 0) == "Patient reports chest pain."
    assert perturb("Negative for appendicitis.", "negation_flip", 0) == "Positive for appendicitis."
    assert perturb("No fever.", "negation_flip", 0) == "Fever."
    flipped = perturb("He has pneumonia.", "negation_flip", 0)
    assert flipped in ("He has no pneumonia.", "He has no evidence of pneumonia.")
    assert perturb("The visit was uneventful.", "negation_flip", 0) == "The visit was uneventful."


def test_distractor_adds_one_mention_the_source_does_not_support(notes):
    for note in notes[:6]:
        for seed in range(2):
            perturbed = perturb(note.text, "distractor", seed)
            new = unsupported_entities(note.text, perturbed)
            assert len(new) == 1
            assert len(clinical_mentions(perturbed)) == len(clinical_mentions(note.text)) + 1
            assert perturbed.isupper() == note.text.isupper()


def test_upper_case_keeps_the_mentions():
    assert perturb(SOURCE, "upper_case", 0) == SOURCE.upper()
    assert negations(perturb(SOURCE, "upper_case", 0)) == negations(SOURCE)


def test_typos_are_deterministic_spare_numbers_and_touch_about_five_percent(notes):
    text = notes[0].text
    first = perturb(text, "typos", 7)
    assert first == perturb(text, "typos", 7) != perturb(text, "typos", 8)
    assert re.findall(r"\d+", first) == re.findall(r"\d+", text)
    words, typoed = re.findall(r"[^\W_]+", text), re.findall(r"[^\W_]+", first)
    changed = [(a, b) for a, b in zip(words, typoed) if a != b]
    eligible = [w for w in words if len(w) >= 4 and w.isalpha()]
    assert len(words) == len(typoed) and len(changed) == round(0.05 * len(eligible))
    assert all(a[0] == b[0] and a[-1] == b[-1] and abs(len(a) - len(b)) <= 1 for a, b in changed)


def test_every_perturbation_is_deterministic_and_unknown_kinds_are_named(notes):
    assert set(PERTURBATIONS) == {"negation_flip", "distractor", "upper_case", "typos"}
    for kind in PERTURBATIONS:
        assert perturb(notes[1].text, kind, 3) == perturb(notes[1].text, kind, 3)
    with pytest.raises(ValueError, match=r"'paraphrase'.*distractor, negation_flip, typos, upper_case"):
        perturb("text", "paraphrase", 0)


def test_mtsamples_notes_parse_fast_with_several_mentions_each():
    with open(shared_corpus("mtsamples/mtsamples.csv"), newline="") as handle:
        rows = [row for _, row in zip(range(200), csv.DictReader(handle))]
    texts = [f"{row['description']}\n{row['transcription']}" for row in rows]
    clinical_mentions("warm up the lexicon")
    started = time.perf_counter()
    counts = [len(clinical_mentions(text)) for text in texts]
    per_note = (time.perf_counter() - started) / len(texts)
    # Measured 1.1-1.7 ms a note (about 1 ms per 2 KB); the bound only catches an accidental slowdown.
    assert per_note < 0.05, f"{per_note * 1000:.1f} ms per note"
    assert sum(counts) / len(counts) > 3
