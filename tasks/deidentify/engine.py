"""Find PHI with Presidio plus the clinical recognizers, and replace it with surrogates or tags."""

from __future__ import annotations

import logging
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass

import pandas as pd
from presidio_analyzer import AnalyzerEngine, BatchAnalyzerEngine, RecognizerRegistry
from presidio_analyzer.nlp_engine import NlpEngineProvider
from tqdm import tqdm

from tasks.deidentify.recognizers import STOP_WORDS, clinical_recognizers
from tasks.deidentify.surrogates import PatientSurrogates, pseudonym
from tasks.params import DeidentifyParams

# Presidio's own recognizers worth keeping for clinical text; the others (bank, passport, crypto,
# driver licence, ...) fire on clinical numbers far more often than on PHI.
PRESIDIO_RECOGNIZERS = ("EmailRecognizer", "IpRecognizer", "PhoneRecognizer", "UsSsnRecognizer",
                        "MedicalLicenseRecognizer", "SpacyRecognizer")
# Presidio entity names folded into the types our surrogates know.
ENTITY_ALIASES = {"DATE_TIME": "DATE", "MEDICAL_LICENSE": "ID", "ZIP": "LOCATION"}
ENTITIES = ["PERSON", "LOCATION", "DATE", "AGE", "PHONE_NUMBER", "EMAIL_ADDRESS", "US_SSN", "IP_ADDRESS",
            "URL", "ID", "HOSPITAL", "MEDICAL_LICENSE"]
PROPAGATED_TYPES = ("PERSON", "LOCATION", "HOSPITAL")


@dataclass(frozen=True)
class PhiSpan:
    start: int
    end: int
    entity_type: str
    score: float


def build_analyzer(spacy_model: str) -> AnalyzerEngine:
    # Presidio warns once per recognizer of every other language it skips; that is noise here.
    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
    nlp_engine = NlpEngineProvider(nlp_configuration={
        "nlp_engine_name": "spacy",
        "models": [{"lang_code": "en", "model_name": spacy_model}],
        "ner_model_configuration": {
            "model_to_presidio_entity_mapping": {"PERSON": "PERSON", "PER": "PERSON", "GPE": "LOCATION",
                                                  "LOC": "LOCATION", "FAC": "LOCATION"},
            "labels_to_ignore": ["DATE", "TIME", "ORG", "NORP", "CARDINAL", "ORDINAL", "QUANTITY", "MONEY",
                                 "PERCENT", "PRODUCT", "EVENT", "WORK_OF_ART", "LAW", "LANGUAGE"],
        },
    }).create_engine()
    registry = RecognizerRegistry()
    registry.load_predefined_recognizers(nlp_engine=nlp_engine)
    for recognizer in list(registry.recognizers):
        if recognizer.name not in PRESIDIO_RECOGNIZERS:
            registry.remove_recognizer(recognizer.name)
    for recognizer in clinical_recognizers():
        registry.add_recognizer(recognizer)
    return AnalyzerEngine(nlp_engine=nlp_engine, registry=registry, supported_languages=["en"])


def merge_overlaps(spans: list[PhiSpan]) -> list[PhiSpan]:
    """Union overlapping spans; the merged span takes the type of its strongest (then longest) part."""
    merged: list[PhiSpan] = []
    for span in sorted(spans, key=lambda s: (s.start, -s.end)):
        if merged and span.start < merged[-1].end:
            last = merged[-1]
            best = max((last, span), key=lambda s: (s.score, s.end - s.start))
            merged[-1] = PhiSpan(last.start, max(last.end, span.end), best.entity_type, best.score)
        else:
            merged.append(span)
    return merged


def propagate(text: str, spans: list[PhiSpan]) -> list[PhiSpan]:
    """Find every other mention of what was detected: 'Mrs. Jennings' also finds a bare 'JENNINGS'."""
    needles: dict[str, str] = {}
    for span in spans:
        if span.entity_type not in PROPAGATED_TYPES:
            continue
        value = text[span.start : span.end]
        needles[value.lower()] = span.entity_type
        if span.entity_type == "PERSON":
            for token in re.findall(r"[A-Za-z][A-Za-z'\-]+", value):
                if len(token) >= 3 and token.lower() not in STOP_WORDS:
                    needles.setdefault(token.lower(), "PERSON")
    found = list(spans)
    for needle, entity_type in needles.items():
        for match in re.finditer(rf"(?<![A-Za-z]){re.escape(needle)}(?![A-Za-z])", text, re.I):
            found.append(PhiSpan(match.start(), match.end(), entity_type, 0.5))
    return merge_overlaps(found)


class PhiDetector:
    def __init__(self, params: DeidentifyParams) -> None:
        self.params = params
        self.analyzer = build_analyzer(params.spacy_model)
        self.batch = BatchAnalyzerEngine(analyzer_engine=self.analyzer)

    def detect(self, texts: list[str], progress: bool = True) -> list[list[PhiSpan]]:
        results = self.batch.analyze_iterator(
            tqdm(texts, desc="detecting PHI", unit="note", disable=not progress),
            language="en", batch_size=self.params.batch_size, entities=ENTITIES,
            score_threshold=self.params.score_threshold,
        )
        detected = []
        for text, found in zip(texts, results):
            spans = [
                PhiSpan(r.start, r.end, ENTITY_ALIASES.get(r.entity_type, r.entity_type), r.score)
                for r in found
                if not (r.entity_type == "PERSON" and text[r.start : r.end].strip(" .").lower() in STOP_WORDS)
            ]
            detected.append(propagate(text, merge_overlaps(spans)))
        return detected


def replace_spans(text: str, spans: list[PhiSpan], replacement) -> str:
    pieces, cursor = [], 0
    for span in spans:
        pieces.append(text[cursor : span.start])
        pieces.append(replacement(span, text[span.start : span.end]))
        cursor = span.end
    pieces.append(text[cursor:])
    return "".join(pieces)


def deidentify_notes(notes: pd.DataFrame, detector: PhiDetector, key: bytes, progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """De-identify `text` and `target` of the ingest contract; ids become keyed pseudonyms."""
    started = time.perf_counter()
    params = detector.params
    texts = notes["text"].tolist() + notes["target"].tolist()
    spans = detector.detect(texts, progress=progress)
    text_spans, target_spans = spans[: len(notes)], spans[len(notes) :]

    real_values: dict[str, set[str]] = defaultdict(set)
    for patient, text, target, t_spans, g_spans in zip(notes["patient_id"], notes["text"], notes["target"], text_spans, target_spans):
        real_values[patient] |= {text[s.start : s.end] for s in t_spans} | {target[s.start : s.end] for s in g_spans}
    surrogates = {p: PatientSurrogates(key, p, params.date_shift_days, values) for p, values in real_values.items()}

    def replacer(patient: str):
        if params.replacement == "tag":
            return lambda span, value: f"<{span.entity_type}>"
        return lambda span, value: surrogates[patient].surrogate(span.entity_type, value)

    rows, counts = [], Counter()
    for record, t_spans, g_spans in zip(notes.to_dict(orient="records"), text_spans, target_spans):
        patient = record["patient_id"]
        counts.update(s.entity_type for s in t_spans)
        rows.append({
            "note_id": "n-" + pseudonym(key, "note", record["note_id"]),
            "patient_id": "p-" + pseudonym(key, "patient", patient),
            "text": replace_spans(record["text"], t_spans, replacer(patient)),
            "target": replace_spans(record["target"], g_spans, replacer(patient)),
            "specialty": record["specialty"],
            "expert": record["expert"],
            "source_row": record["source_row"],
            "phi_replaced": len(t_spans) + len(g_spans),
        })
    seconds = time.perf_counter() - started
    stats = {"notes": len(rows), "phi_spans": sum(counts.values()), "seconds": round(seconds, 2),
             "notes_per_second": round(len(rows) / seconds, 2) if seconds else 0.0,
             **{f"spans_{k.lower()}": v for k, v in sorted(counts.items())}}
    return pd.DataFrame(rows), stats
