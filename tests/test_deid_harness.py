"""Corpus readers, the token-level scorer, `medlora deid detect/evaluate`, long notes and the surrogate map."""

import json
from pathlib import Path

import pytest
import yaml

from flows.cli import main
from tasks.deidentify.corpora import CorpusFormatError, GoldNote, GoldSpan, read_corpus
from tasks.deidentify.engine import PhiSpan, chunk_text
from tasks.deidentify.evaluate import HIPAA_PRESIDIO_TYPES, score_corpus
from tasks.deidentify.harness import detect_texts
from tasks.deidentify.surrogates import (
    PatientSurrogates,
    read_surrogate_map,
    write_surrogate_map,
)

from .conftest import PROJECT, shared_corpus

KEY = b"harness-key"


def test_physionet_reader_offsets_point_at_the_phrases():
    corpus = shared_corpus("physionet-deid")
    notes = read_corpus(corpus)
    phrases = [line.split(maxsplit=5) for line in (corpus / "id-phi.phrase").read_text().splitlines() if line.strip()]
    by_id = {n.note_id: n for n in notes}
    assert len(notes) == 973 and sum(len(n.spans) for n in notes) == len(phrases)
    for patient, note, start, end, _, text in phrases:
        assert by_id[f"{patient}-{note}"].text[int(start) : int(end)] == text


def test_presidio_reader_keeps_templates_together():
    notes = read_corpus(shared_corpus("presidio-synth/synth_dataset_v2.json"))
    assert len(notes) == 1500
    note = notes[0]
    assert all(note.text[s.start : s.end] for s in note.spans) and note.split_group.startswith("template-")


def test_readers_name_the_file_and_line_of_bad_input(tmp_path):
    bad = tmp_path / "notes.jsonl"
    bad.write_text('{"note_id": "1", "text": "ok"}\n{"note_id": "2"}\n')
    with pytest.raises(CorpusFormatError, match=r"notes.jsonl line 2: field 'text'"):
        read_corpus(bad)
    (tmp_path / "id.text").write_text("START_OF_RECORD=1||||1||||\nJohn was here.\n||||END_OF_RECORD\n")
    (tmp_path / "id-phi.phrase").write_text("1 1 0 4 PTName John\n1 1 0 99 PTName beyond\n")
    with pytest.raises(CorpusFormatError, match=r"id-phi.phrase line 2: span 0-99 lies outside note 1-1"):
        read_corpus(tmp_path)


def test_token_scores_count_alphanumeric_runs():
    note = GoldNote("1", "Seen by Dr. Mary Ann Lee on 7/22 at GH.", spans=[GoldSpan(12, 24, "HCPName"), GoldSpan(28, 32, "Date"), GoldSpan(36, 38, "Location")])
    detected = [PhiSpan(12, 20, "PERSON", 0.9), PhiSpan(28, 29, "DATE", 0.9), PhiSpan(0, 4, "PERSON", 0.5)]
    scores = score_corpus([note], [detected])
    # gold tokens: Mary Ann Lee 7 22 GH (6); found: Mary Ann 7 (3); false positive: Seen
    assert (scores.true_positives, scores.false_negatives, scores.false_positives) == (3, 3, 1)
    assert scores.summary()["recall_by_type"] == {"Date": 0.5, "HCPName": 0.6667, "Location": 0.0}
    assert scores.recall == 0.5 and scores.precision == 0.75 and round(scores.f_beta(2), 4) == round(5 * 0.75 * 0.5 / (4 * 0.75 + 0.5), 4)


def test_hipaa_scoring_leaves_out_other_types():
    note = GoldNote("1", "Acme hired Bob", spans=[GoldSpan(0, 4, "ORGANIZATION"), GoldSpan(11, 14, "PERSON")])
    scores = score_corpus([note], [[PhiSpan(0, 4, "ORG", 1.0)]], HIPAA_PRESIDIO_TYPES)
    assert (scores.true_positives, scores.false_positives, scores.false_negatives) == (0, 0, 1)


def test_chunks_overlap_and_cover_the_text():
    text = " ".join(f"word{i}" for i in range(5000))
    chunks = chunk_text(text, 2000, overlap=100)
    assert chunks[0][0] == 0 and chunks[-1][0] + len(chunks[-1][1]) == len(text)
    for (start, piece), (next_start, _) in zip(chunks, chunks[1:]):
        assert text[start : start + len(piece)] == piece and next_start < start + len(piece)


def test_a_200k_character_note_is_deidentified_in_windows(deid_params):
    filler = "Patient reports mild dyspnea on exertion, improved with rest. " * 3300
    text = "PATIENT: Harold Finch\n" + filler + "Follow up with Dr. Root on 03/14/2024.\n"
    assert len(text) > 200_000
    [spans] = detect_texts([text], deid_params, Path("."), progress=False)
    found = {text[s.start : s.end] for s in spans}
    assert {"Harold Finch", "Root", "03/14/2024"} <= found
    assert all(0 <= s.start < s.end <= len(text) for s in spans)



def test_url_prefilter_finds_what_presidios_url_recognizer_finds():
    from presidio_analyzer.predefined_recognizers import UrlRecognizer

    from tasks.deidentify.engine import REQUIRED_TEXT, PrefilteredRecognizer

    presidio = UrlRecognizer()
    prefiltered = PrefilteredRecognizer(presidio, REQUIRED_TEXT["UrlRecognizer"])
    texts = ["see https://portal.mercy-health.org/chart?id=7 and www.example.co.uk.", "Results at labs.Example.COM/x",
             "pt. tolerated p.o. meds b.i.d. vs. 120/80", "email j.doe@hosp.net", "no dots here at all"]
    for text in texts:
        found = {(r.start, r.end) for r in presidio.analyze(text, ["URL"])}
        assert {(r.start, r.end) for r in prefiltered.analyze(text, ["URL"])} == found
    assert not prefiltered.analyze(texts[2], ["URL"]) and not prefiltered.analyze(texts[4], ["URL"])


def test_a_batch_of_notes_reads_as_each_note_alone(deid_params):
    from tasks.deidentify.engine import PhiDetector

    detector = PhiDetector(deid_params)
    texts = ["PATIENT: Harold Finch. Seen by Dr. Root on 03/14/2024 at Mercy Hospital.", "",
             "WIFE MARY AT BEDSIDE. BP 99/40, HR 88. Plan: CABG 2/12.", "12 34"]
    [evidence] = [detector.evidence(texts)]
    assert detector.model.predict_many(texts, evidence) == [detector.model.predict(t, e) for t, e in zip(texts, evidence)]
    assert detector.detect(texts, progress=False) == [detector.detect([t], progress=False)[0] for t in texts]

def _sure_hits(text: str) -> set[tuple[str, str]]:
    from tasks.deidentify.engine import is_sure
    from tasks.deidentify.recognizers import clinical_recognizers

    return {(r.entity_type, text[r.start : r.end]) for recognizer in clinical_recognizers()
            for r in recognizer.analyze(text, None) if is_sure(recognizer.name, r, 0.7)}


def test_icu_shorthand_is_not_taken_for_phi_by_the_rules():
    text = ("RESP: O2 weaned to 4L NP. Notify MD if SBP<90. ID: afebrile. CO/CI 5.7/3.33, psv 12/5/40%. "
            "Wife is aware of plan. GIVEN MOM X1. Plan: transfer to acute rehab. Lie flat until 2000. c/o 3-4/10 cpain. "
            "PA LINE D/C. MS back to baseline. GU: 3 WAY FOLEY IN PLACE. bleed into the 4th ventricle. "
            "WIFE STILL IN DENIAL. ST ELEVATION. CLEAR R. BASE. P: CON'T REHAB/PT. HOB 30'. HO AWARE. "
            "HO notifed. Seen by Cardic Transplant. proxy is grandaughter. given 16 u lente SQ. HCT checked 25 stable CT. "
            "ID: TMAX-99. Lasix prior to leaving prior medical center. see previous hospital course.")
    assert _sure_hits(text) == set()


def test_clinical_context_rules_find_nursing_note_phi():
    text = ("PMH: CABG '92. SON BROUGHT HIM TO UNION HOSP. COPING-SISTER ,JANET HAS PHONED. "
            "Seen by Mary Jones, NP. stated march 21, 1899. MRN: 12345678. CVA 2004, MI 1992. TR, Z. MILLER AWARE. "
            "Accepted by St. Agnes. Nursing Progress Note 28 Oct, 88. in sept. and d/c'd. DISCHARGE TO BALTIMORE REHAB. "
            "L LUNG RESECTION 62'. SPOKE WITH HO SCHWARZ. per hospital policy #rg17. Seen by Dr. Lavely. 12 Elm St. Dr. o rourke here. bed at Holy Cross. works at harford memorial.")
    assert {("LOCATION", "UNION"), ("PERSON", "JANET"), ("PERSON", "Mary Jones"), ("DATE", "'92"),
            ("DATE", "march 21, 1899"), ("ID", "12345678"), ("DATE", "2004"), ("DATE", "1992"), ("PERSON", "Z. MILLER"),
            ("LOCATION", "St. Agnes"), ("DATE", "28 Oct, 88"), ("DATE", "sept."), ("LOCATION", "BALTIMORE REHAB"),
            ("DATE", "62"), ("PERSON", "SCHWARZ"), ("ID", "rg17"), ("PERSON", "Lavely"), ("LOCATION", "12 Elm St."),
            ("PERSON", "o rourke"), ("LOCATION", "Holy Cross"),
            ("LOCATION", "harford memorial")
            } <= _sure_hits(text)


def test_detected_spans_lose_the_words_beside_phi():
    from tasks.deidentify.engine import trim_edges

    text = ("Dr. Stronczek in room. family mtg monday 8/28. arrived to CCU at 2300 10/15. to quartermain 2 today. "
            "COPING-SISTER,CARROLL ANNE called. Reported to Dr. O'Rourke, 250ml NS. MR DEXTER WORSENED THRU NOC.")

    def span(value: str, entity_type: str, score: float = 0.9) -> PhiSpan:
        start = text.index(value)
        return PhiSpan(start, start + len(value), entity_type, score)

    spans = [span("Dr. Stronczek", "PERSON"), span("monday 8/28", "DATE"), span("2300 10/15", "DATE"),
             span("quartermain 2", "LOCATION"), span("SISTER,CARROLL ANNE", "PERSON"),
             span("O'Rourke, 250ml", "PERSON"), span("DEXTER WORSENED", "PERSON")]
    trimmed = [text[s.start : s.end] for s in trim_edges(text, spans, vocabulary=frozenset({"worsened"}))]
    assert trimmed == ["Stronczek", "8/28", "10/15", "quartermain", "CARROLL ANNE", "O'Rourke", "DEXTER"]


def test_date_spans_keep_only_what_dates_are_made_of():
    from tasks.deidentify.engine import split_dates

    text = "PMH MI '92, CABG X3 '92, REDO '95. 10/26: CABGX4. seen Sept. 3rd, 1999."
    spans = [PhiSpan(text.index("92"), text.index(". 10"), "DATE", 0.9),
             PhiSpan(text.index("10/26"), text.index(". seen"), "DATE", 0.9),
             PhiSpan(text.index("Sept"), len(text) - 1, "DATE", 0.9)]
    assert [text[s.start : s.end] for s in split_dates(text, spans)] == ["92", "'92", "'95", "10/26", "Sept. 3rd, 1999"]


def test_measurements_get_no_phi_probability_and_glued_dates_stay_dates():
    import numpy as np

    from tasks.deidentify.evaluate import TOKEN
    from tasks.deidentify.token_model import OUTSIDE, _date_like, phi_probability

    text = ("c/o pain #9/10. PA 63-70/27-30, at 6:30 and at 0400 hct sent. BP 99/40, lasix up from 9 mg. BC FROM 9/2 GM + "
            "given 400mg, on AC 700/10/40%, BIPAP 10/5")
    tokens = [m.span() for m in TOKEN.finditer(text)]
    phi = phi_probability(text, tokens, np.tile([0.5, 0.5], (len(tokens), 1)), [OUTSIDE, "DATE"].index(OUTSIDE))
    date_at = text.index("9/2")
    in_date = [date_at <= start < date_at + 3 for start, _ in tokens]
    numbers = [(p, dated) for p, dated, (start, end) in zip(phi, in_date, tokens) if text[start].isdigit()]
    assert [p for p, dated in numbers if dated] == [0.5, 0.5]
    assert all(p == 0 for p, dated in numbers if not dated)
    glued = ("9/7-ADMITTED", "on10/14/82>", "3/16->", "12.9/21.9")
    assert [_date_like(c) for c in glued] == ["valid2", "valid3", "valid2", "no"]


def test_clinical_shorthand_and_soap_letters_get_no_phi_probability():
    import numpy as np

    from tasks.deidentify.token_model import OUTSIDE, phi_probability

    text = "S: aline in place, U Maryland scale"
    tokens = [(0, 1), (3, 8), (9, 11), (12, 17), (19, 20), (21, 29), (30, 35)]
    probabilities = np.tile([0.5, 0.5], (len(tokens), 1))  # columns: OUTSIDE, PERSON
    phi = phi_probability(text, tokens, probabilities, [OUTSIDE, "PERSON"].index(OUTSIDE))
    assert phi[0] == 0 and phi[1] == 0 and phi[4] == 0.5 and phi[5] == 0.5


def test_date_shift_differs_between_patients_and_map_needs_the_key(tmp_path):
    first, second = (PatientSurrogates(KEY, p, (-365, -30), {"Harold Finch"}) for p in ("p1", "p2"))
    assert first.date_shift != second.date_shift
    surrogate = first.surrogate("PERSON", "Harold Finch")
    path = tmp_path / "map.enc"
    write_surrogate_map(path, {"p1": first}, "owner secret")
    assert b"Finch" not in path.read_bytes()
    assert read_surrogate_map(path, "owner secret") == {"p1": [["PERSON", "Harold Finch", surrogate]]}
    with pytest.raises(ValueError, match="wrong key"):
        read_surrogate_map(path, "guess")


@pytest.fixture
def cli_root(tmp_path, deid_params):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({
        "input": {"path": "x.jsonl", "columns": {"note_id": "id", "text": "t", "specialty": "s", "target": "g"}},
        "experts": {"any": ["x"]},
        "deidentify": {"model": {"path": deid_params.model.path, "sources": [{"format": "synthetic"}]}},
    }))
    return tmp_path


def test_deid_detect_then_evaluate_from_the_command_line(cli_root, capsys):
    notes = [{"note_id": "a", "text": "ATTENDING: Dr. Harold Finch\nSeen 03/14/2024 for cough.",
              "spans": [{"start": 15, "end": 27, "entity_type": "PERSON"}, {"start": 33, "end": 43, "entity_type": "DATE"}]},
             {"note_id": "b", "text": "Mild cough, no fever.", "spans": []}]
    source = cli_root / "notes.jsonl"
    source.write_text("".join(json.dumps(n) + "\n" for n in notes))
    output = cli_root / "spans.jsonl"
    assert main(["--root", str(cli_root), "deid", "detect", "--input", str(source), "--output", str(output)]) == 0
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert [line["note_id"] for line in lines] == ["a", "b"]
    assert {"start", "end", "entity_type", "score"} <= set(lines[0]["spans"][0])
    assert "Finch" not in output.read_text()
    report = cli_root / "scores.json"
    assert main(["--root", str(cli_root), "deid", "evaluate", "--gold", str(source), "--spans", str(output), "--report", str(report)]) == 0
    scores = json.loads(report.read_text())
    assert scores["recall"] == 1.0 and scores["phi_tokens"] == 5
    assert main(["--root", str(cli_root), "deid", "evaluate", "--gold", str(cli_root / "missing.json")]) == 2
    assert "missing.json: not found" in capsys.readouterr().err


def test_shipped_model_reads_the_corpora_it_was_trained_on(deid_params):
    """A guard on the shipped model and the detector around it (optimistic figures: these are its training notes;
    `medlora deid cv` gives the honest ones, recorded in models/deid/MODEL_CARD.md)."""
    from tasks.deidentify.harness import evaluate_corpus

    physionet = evaluate_corpus(shared_corpus("physionet-deid"), "physionet", deid_params, PROJECT, workers=2, progress=False)
    assert physionet["trained_on"] is False  # deid_params names no sources; the shipped card does
    assert physionet["recall"] >= 0.99 and physionet["precision"] >= 0.35
    synth = evaluate_corpus(shared_corpus("presidio-synth/synth_dataset_v2.json"), "presidio", deid_params, PROJECT,
                            workers=2, progress=False)
    assert synth["types"] == "HIPAA types" and synth["f2"] >= 0.9
