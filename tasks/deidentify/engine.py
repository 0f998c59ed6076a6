"""Find PHI with Presidio, the PHI token model and the clinical recognizers; replace it with surrogates or tags."""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import spacy
from presidio_analyzer import (
    AnalyzerEngine,
    EntityRecognizer,
    RecognizerRegistry,
    RecognizerResult,
)
from presidio_analyzer.nlp_engine import (
    NerModelConfiguration,
    NlpEngine,
    SpacyNlpEngine,
)
from tqdm import tqdm
from wordfreq import zipf_frequency

from tasks.deidentify.lexicons import person_names
from tasks.deidentify.recognizers import (
    MONTHS,
    RELATIONS,
    STOP_WORDS,
    clinical_recognizers,
    could_be_name,
    is_misspelt_common_word,
)
from tasks.deidentify.surrogates import (
    MAP_FILE,
    MAP_KEY_ENV,
    PatientSurrogates,
    pseudonym,
    write_surrogate_map,
)
from tasks.deidentify.token_model import CLOCK_TIME, Evidence, TokenPhiModel
from tasks.params import DeidentifyParams

# Presidio's own recognizers worth keeping for clinical text; the others (bank, passport, crypto,
# driver licence, ...) fire on clinical numbers far more often than on PHI.
PRESIDIO_RECOGNIZERS = ("EmailRecognizer", "IpRecognizer", "PhoneRecognizer", "UsSsnRecognizer",
                        "MedicalLicenseRecognizer", "SpacyRecognizer")
# With the token model, every pattern is evidence for it to weigh, even noisy ones.
# Presidio's PhoneRecognizer is left out: phonenumbers costs more than all the rest together, and
# ClinicalPhoneRecognizer covers North American numbers.
PRESIDIO_EVIDENCE = tuple(r for r in PRESIDIO_RECOGNIZERS if r != "PhoneRecognizer") + (
    "CreditCardRecognizer", "IbanRecognizer", "UrlRecognizer", "DateRecognizer", "UsLicenseRecognizer")
# Identifiers whose patterns are precise enough to trust on their own, next to the token model.
STRUCTURED_RECOGNIZERS = ("EmailRecognizer", "IpRecognizer", "ClinicalUrlRecognizer", "ClinicalSsnRecognizer",
                          "ClinicalPhoneRecognizer")
TRUSTED_RULE_RECOGNIZERS = ("ContextNameRecognizer", "ClinicalDateRecognizer", "OldAgeRecognizer", "ClinicalIdRecognizer",
                            "ClinicalLocationRecognizer", "HospitalRecognizer", "FacilityNameRecognizer", "SaintPlaceRecognizer")
# Presidio entity names folded into the types our surrogates know.
ENTITY_ALIASES = {"DATE_TIME": "DATE", "MEDICAL_LICENSE": "ID", "ZIP": "LOCATION"}
ENTITIES = ["PERSON", "LOCATION", "DATE", "AGE", "PHONE_NUMBER", "EMAIL_ADDRESS", "US_SSN", "IP_ADDRESS",
            "URL", "ID", "HOSPITAL", "MEDICAL_LICENSE"]
PROPAGATED_TYPES = ("PERSON", "LOCATION", "HOSPITAL")
# Words that sit next to PHI but are never part of it: "Dr. [Stronczek]", "SISTER,[CARROLL ANNE]",
# "monday [8/28]", "[CALVERT] HOSPITAL". Detected spans lose them at either edge. Some stop words are
# names ("Will", "Ed") or name facilities ("[Sacred Heart Memorial]", "[St. Joseph]").
EDGE_WORDS = (
    (STOP_WORDS - {"will", "ed", "memorial", "general", "heart", "st", "community"})
    | frozenset(RELATIONS.split("|"))
    | frozenset("""monday tuesday wednesday thursday friday saturday sunday mon tue tues wed thu thur thurs fri sat sun
                hosp nursing pager beeper cnm crna phd facs facc msw licsw rrt rt lpn cna""".split())
)
EDGE_TOKEN = re.compile(r"[A-Za-z0-9]+")
# Clock times next to a date ("2300 10/15", "10/14/87, 0930", "6-19-19 3P") are not part of it; nor are
# other numbers ("HCT 30 3/9"). 19xx and 20xx stay: they may be years.
CLOCK_OR_NUMBER = re.compile(r"\d{1,2}(?:am|pm|a|p)|(?!19|20)\d{1,4}", re.I)
NUMERIC_DATE = re.compile(r"\d{1,2}[/\-]\d{1,2}(?:[/\-]\d{2,4})?")
# What a date is made of besides numbers; "CABG X3" between "MI '92" and "'92" is not.
CALENDAR_WORD = re.compile(rf"(?:{MONTHS}|christmas|xmas|thanksgiving|easter|hanukkah|halloween|spring|summer|fall|"
                           r"autumn|winter)", re.I)
COUNT_OR_CODE = re.compile(r"[A-Za-z]*x\d{1,2}|[A-Za-z]{3,}\d+", re.I)  # "X3", "CABGX4", "Hct28"
UNSURE_SPAN_SCORE = 0.5
COMMON_NAME_WORD_ZIPF = 4.0
# A ward number is no part of the ward's name ("quartermain 2"); an apartment number is part of an address.
ADDRESS_UNIT_WORDS = frozenset({"apt", "apartment", "suite", "ste", "unit", "no", "box", "floor", "fl"})
# spaCy components PHI detection does not use; leaving them out halves the time spaCy takes.
UNUSED_SPACY_COMPONENTS = ["tok2vec", "tagger", "parser", "attribute_ruler", "lemmatizer", "senter"]


@dataclass(frozen=True)
class PhiSpan:
    start: int
    end: int
    entity_type: str
    score: float


def build_nlp_engine(spacy_model: str) -> NlpEngine:
    """Presidio's spaCy engine; `none` keeps only spaCy's tokenizer (the token model needs no NER)."""
    # Presidio warns once per recognizer of every other language it skips; that is noise here.
    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
    nlp_engine = SpacyNlpEngine(
        models=[{"lang_code": "en", "model_name": spacy_model}],
        ner_model_configuration=NerModelConfiguration(
            model_to_presidio_entity_mapping={"PERSON": "PERSON", "PER": "PERSON", "GPE": "LOCATION", "LOC": "LOCATION",
                                              "FAC": "LOCATION"},
            labels_to_ignore=["DATE", "TIME", "ORG", "NORP", "CARDINAL", "ORDINAL", "QUANTITY", "MONEY", "PERCENT",
                              "PRODUCT", "EVENT", "WORK_OF_ART", "LAW", "LANGUAGE"],
        ),
    )
    if spacy_model == "none":
        nlp = spacy.blank("en")
    else:
        try:
            nlp = spacy.load(spacy_model, exclude=UNUSED_SPACY_COMPONENTS)
        except OSError as error:
            raise ValueError(f"deidentify.spacy_model: spaCy pipeline '{spacy_model}' is not installed") from error
        if "ner" not in nlp.pipe_names:  # a pipeline whose NER listens to a shared tok2vec
            nlp = spacy.load(spacy_model)
    nlp.max_length = 2_000_000  # long notes are chunked before spaCy sees them; this is only a backstop
    nlp_engine.nlp = {"en": nlp}
    return nlp_engine


def _presidio_recognizers(nlp_engine: NlpEngine, names: tuple[str, ...]) -> list[EntityRecognizer]:
    registry = RecognizerRegistry()
    registry.load_predefined_recognizers(nlp_engine=nlp_engine)
    return [r for r in registry.recognizers if r.name in names and "en" == r.supported_language]


def recognizer_results(text: str, nlp_artifacts, recognizers: list[EntityRecognizer]) -> list[tuple[str, RecognizerResult]]:
    return [(r.name, result) for r in recognizers for result in r.analyze(text, r.supported_entities, nlp_artifacts) or []]


def is_sure(name: str, result: RecognizerResult, trusted_rule_score: float) -> bool:
    """Whether the detector replaces this hit whatever the token model says."""
    return name in STRUCTURED_RECOGNIZERS or (name in TRUSTED_RULE_RECOGNIZERS and result.score >= trusted_rule_score)


def collect_evidence(nlp_artifacts, named_results: list[tuple[str, RecognizerResult]], trusted_rule_score: float) -> list[Evidence]:
    """Every recognizer's opinion, and spaCy's entities (without a spaCy pipeline, `nlp_artifacts` is None), as
    labelled stretches of the text."""
    entities = nlp_artifacts.tokens.ents if nlp_artifacts is not None else ()
    evidence = [Evidence(e.start_char, e.end_char, f"spacy:{e.label_}") for e in entities]
    return evidence + [Evidence(r.start, r.end, f"{name}:{r.entity_type}", is_sure(name, r, trusted_rule_score))
                       for name, r in named_results]


class PrefilteredRecognizer(EntityRecognizer):
    """A recognizer run only on texts where `required`, which every match of it contains, is found.

    Presidio's UrlRecognizer tries hundreds of top-level domains at every position of a note: 0.76 ms a
    PhysioNet note, a tenth of all detection; a note without a dot before two letters cannot hold a URL."""

    def __init__(self, recognizer: EntityRecognizer, required: re.Pattern) -> None:
        self.recognizer = recognizer
        self.required = required
        super().__init__(supported_entities=recognizer.supported_entities, name=recognizer.name,
                         supported_language=recognizer.supported_language)

    def load(self) -> None:
        pass

    def analyze(self, text, entities, nlp_artifacts=None):
        return self.recognizer.analyze(text, entities, nlp_artifacts) if self.required.search(text) else []


# What every match of a recognizer contains: UrlRecognizer's host ends "[a-z0-9.-].<top-level domain>".
REQUIRED_TEXT = {"UrlRecognizer": re.compile(r"[a-z0-9.\-]\.[a-z]{2}", re.I)}


def evidence_recognizers(nlp_engine: NlpEngine) -> list[EntityRecognizer]:
    presidio = [r for r in _presidio_recognizers(nlp_engine, PRESIDIO_EVIDENCE) if r.name != "SpacyRecognizer"]
    return [PrefilteredRecognizer(r, REQUIRED_TEXT[r.name]) if r.name in REQUIRED_TEXT else r for r in presidio] + clinical_recognizers()


def build_rules_analyzer(nlp_engine: NlpEngine) -> AnalyzerEngine:
    """Rules-only detection (no token model): Presidio's and our recognizers, scored by Presidio."""
    registry = RecognizerRegistry(supported_languages=["en"])
    for recognizer in _presidio_recognizers(nlp_engine, PRESIDIO_RECOGNIZERS) + clinical_recognizers():
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


def _is_edge_token(text: str, span: PhiSpan, token: re.Match, chunks: list[str], at_end: bool,
                   vocabulary: frozenset[str]) -> bool:
    word = token.group()
    bare = word.lower()
    if bare in EDGE_WORDS:
        return True
    first_names, last_names = person_names()
    clinical_word = len(word) > 2 and bare in vocabulary and bare not in first_names and bare not in last_names
    # A name the model is unsure of loses common clinical words even when they are surnames too ("Walker",
    # "Stat"); sure spans ("Dr. Art White") keep them. Places keep them: "Sacred Heart", "Holy Cross".
    common_clinical_word = (span.score < UNSURE_SPAN_SCORE and len(word) > 2 and bare in vocabulary
                            and bare not in first_names and zipf_frequency(bare, "en") >= COMMON_NAME_WORD_ZIPF)
    possessive = bare == "s" and text[token.start() - 1 : token.start()] == "'"
    if span.entity_type == "PERSON":
        return (clinical_word or common_clinical_word or possessive or any(c.isdigit() for c in word)
                or is_misspelt_common_word(bare))
    if span.entity_type == "DATE":
        chunk = chunks[-1] if at_end else chunks[0]
        return len(chunks) > 1 and bool(CLOCK_OR_NUMBER.fullmatch(chunk.strip(".,;:()"))) and any(
            NUMERIC_DATE.fullmatch(c.strip(".,;:()")) for c in chunks)
    if span.entity_type in ("LOCATION", "HOSPITAL") and at_end and (len(word) <= 2 and word.isdigit() or CLOCK_TIME.fullmatch(word)):
        before = text[span.start : token.start()].split()
        return bool(before) and before[-1].strip(".#,").lower() not in ADDRESS_UNIT_WORDS and before[-1] != "#"
    return False


def trim_edges(text: str, spans: list[PhiSpan], vocabulary: frozenset[str] = frozenset()) -> list[PhiSpan]:
    """Spans without what sits at their edges but is no PHI: EDGE_WORDS, clock times beside a date,
    digits or clinical words beside a name ("Dr. Dolan). Placed"), a ward number after a place.
    A span of nothing else is dropped."""
    trimmed = []
    for span in spans:
        tokens = list(EDGE_TOKEN.finditer(text, span.start, span.end))
        while tokens:
            chunks = text[tokens[0].start() : tokens[-1].end()].split()
            if _is_edge_token(text, span, tokens[0], chunks, False, vocabulary):
                tokens.pop(0)
            elif _is_edge_token(text, span, tokens[-1], chunks, True, vocabulary):
                tokens.pop()
            else:
                break
        if tokens:
            trimmed.append(PhiSpan(tokens[0].start(), tokens[-1].end(), span.entity_type, span.score))
    return trimmed


def _is_calendar_token(word: str) -> bool:
    if any(c.isdigit() for c in word):
        return not COUNT_OR_CODE.fullmatch(word)
    return bool(CALENDAR_WORD.fullmatch(word))


def split_dates(text: str, spans: list[PhiSpan]) -> list[PhiSpan]:
    """Date spans cut where a word is no part of a date: "MI '92, CABG X3 '92" is two dates, "10/26: CABGX4"
    one. Gold dates in the PhysioNet corpus have no other words."""
    result = []
    for span in spans:
        tokens = list(EDGE_TOKEN.finditer(text, span.start, span.end))
        if span.entity_type != "DATE" or all(_is_calendar_token(t.group()) for t in tokens):
            result.append(span)
            continue
        piece: list[re.Match] = []
        for token in [*tokens, None]:
            if token is not None and _is_calendar_token(token.group()):
                piece.append(token)
                continue
            if piece:
                start = piece[0].start() - (text[piece[0].start() - 1] == "'" and piece[0].start() > span.start)
                result.append(PhiSpan(start, piece[-1].end(), span.entity_type, span.score))
            piece = []
    return result


def worth_propagating(word: str, vocabulary: frozenset[str]) -> bool:
    """A word found as a name or place is searched for elsewhere in the note only when it could be one and is
    no clinical word (surnames include "Nurse", "Given" and "Scale"): a stray "scale" must not spread."""
    bare = word.lower()
    return could_be_name(word) and (bare in person_names()[0] or bare not in vocabulary)


def propagate(text: str, spans: list[PhiSpan], min_score: float = 0.0,
              vocabulary: frozenset[str] = frozenset()) -> list[PhiSpan]:
    """Find every other mention of what was detected: 'Mrs. Jennings' also finds a bare 'JENNINGS'."""
    needles: dict[str, str] = {}
    for span in spans:
        if span.entity_type not in PROPAGATED_TYPES or span.score < min_score:
            continue
        value = text[span.start : span.end]
        if len(value.strip()) >= 3 and (" " in value.strip() or worth_propagating(value.strip(), vocabulary)):
            needles[value.lower()] = span.entity_type
        if span.entity_type == "PERSON":
            for token in re.findall(r"[A-Za-z][A-Za-z'\-]+", value):
                if len(token) >= 3 and worth_propagating(token, vocabulary):
                    needles.setdefault(token.lower(), "PERSON")
    found = list(spans)
    for needle, entity_type in needles.items():
        for match in re.finditer(rf"(?<![A-Za-z]){re.escape(needle)}(?![A-Za-z])", text, re.I):
            found.append(PhiSpan(match.start(), match.end(), entity_type, 0.5))
    return merge_overlaps(found)


def finish_spans(text: str, spans: list[PhiSpan], propagate_score: float, vocabulary: frozenset[str]) -> list[PhiSpan]:
    """What the detector makes of raw hits: merged, trimmed at the edges, and propagated through the note."""
    return propagate(text, split_dates(text, merge_overlaps(trim_edges(text, spans, vocabulary))), propagate_score, vocabulary)


def chunk_text(text: str, size: int, overlap: int = 200) -> list[tuple[int, str]]:
    """Windows of at most `size` characters, overlapping by `overlap` and cut at whitespace."""
    if len(text) <= size:
        return [(0, text)]
    chunks, start = [], 0
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text):
            cut = text.rfind(" ", start + size // 2, end)
            end = cut if cut > 0 else end
        chunks.append((start, text[start:end]))
        if end >= len(text):
            break
        start = max(end - overlap, start + 1)
    return chunks


class PhiDetector:
    """PHI spans of many notes: the token model over every recognizer's evidence (or, rules only, Presidio's
    AnalyzerEngine), spaCy batched when a pipeline is configured, long notes in windows."""

    def __init__(self, params: DeidentifyParams, model: TokenPhiModel | None = None, root: Path = Path(".")) -> None:
        self.params = params
        if model is None and params.use_model:
            model = load_token_model(root / params.model.path)
        self.model = model
        self.nlp_engine = build_nlp_engine(params.spacy_model)
        self.evidence_recognizers = evidence_recognizers(self.nlp_engine)
        self.analyzer = build_rules_analyzer(self.nlp_engine) if model is None else None

    def _chunks(self, texts: list[str]) -> tuple[list[str], list[tuple[int, int]]]:
        pieces, owners = [], []
        for index, text in enumerate(texts):
            for offset, piece in chunk_text(text, self.params.chunk_chars):
                pieces.append(piece)
                owners.append((index, offset))
        return pieces, owners

    def _artifacts(self, texts: list[str], progress: bool, description: str, for_analyzer: bool = False):
        """(note index, chunk offset, chunk, nlp artifacts) for every chunk, spaCy batched. Without a spaCy
        pipeline (spacy_model: none) only Presidio's AnalyzerEngine reads spaCy's tokens (for context words);
        for the others spaCy is not run: None."""
        pieces, owners = self._chunks(texts)
        bar = tqdm(total=len(texts), desc=description, unit="note", disable=not progress)
        if self.params.spacy_model == "none" and not for_analyzer:
            batches = ((piece, None) for piece in pieces)
        else:
            batches = self.nlp_engine.process_batch(pieces, language="en", batch_size=self.params.batch_size)
        for (index, offset), (piece, artifacts) in zip(owners, batches):
            yield index, offset, piece, artifacts
            if offset == 0:
                bar.update(1)
        bar.close()

    def _readings(self, texts: list[str], progress: bool, description: str):
        """(note index, chunk offset, chunk, named recognizer results, evidence) for every chunk."""
        for index, offset, piece, artifacts in self._artifacts(texts, progress, description):
            named_results = recognizer_results(piece, artifacts, self.evidence_recognizers)
            yield index, offset, piece, named_results, collect_evidence(artifacts, named_results, self.params.trusted_rule_score)

    def evidence(self, texts: list[str], progress: bool = False):
        """What every recognizer and spaCy say about each note: the token model's input."""
        found: list[list[Evidence]] = [[] for _ in texts]
        for index, offset, _, _, evidence in self._readings(texts, progress, "collecting evidence"):
            found[index].extend(Evidence(e.start + offset, e.end + offset, e.label, e.sure) for e in evidence)
        return found

    def _model_spans(self, texts: list[str], progress: bool):
        """(note index, chunk offset, chunk, spans) per chunk: the token model's spans, read a batch at a time,
        and the hits of patterns and context rules sure enough to stand on their own ("MRN: 123", "Dr. Smith")."""
        readings = self._readings(texts, progress, "detecting PHI")
        while batch := list(itertools.islice(readings, self.params.batch_size)):
            predicted = self.model.predict_many([piece for _, _, piece, _, _ in batch], [evidence for *_, evidence in batch])
            for (index, offset, piece, named_results, _), spans in zip(batch, predicted):
                trusted = [PhiSpan(r.start, r.end, r.entity_type, r.score) for name, r in named_results
                           if is_sure(name, r, self.params.trusted_rule_score)]
                yield index, offset, piece, [PhiSpan(s.start, s.end, s.entity_type, s.score) for s in spans] + trusted

    def _rule_spans(self, texts: list[str], progress: bool):
        for index, offset, piece, artifacts in self._artifacts(texts, progress, "detecting PHI", for_analyzer=True):
            results = self.analyzer.analyze(piece, language="en", entities=ENTITIES, nlp_artifacts=artifacts,
                                            score_threshold=self.params.score_threshold)
            yield index, offset, piece, [PhiSpan(r.start, r.end, r.entity_type, r.score) for r in results]

    def detect(self, texts: list[str], progress: bool = True) -> list[list[PhiSpan]]:
        found: list[list[PhiSpan]] = [[] for _ in texts]
        chunks = self._rule_spans(texts, progress) if self.model is None else self._model_spans(texts, progress)
        for index, offset, piece, spans in chunks:
            found[index].extend(
                PhiSpan(s.start + offset, s.end + offset, ENTITY_ALIASES.get(s.entity_type, s.entity_type), s.score)
                for s in spans
                if not (s.entity_type == "PERSON" and piece[s.start : s.end].strip(" .").lower() in STOP_WORDS)
            )
        min_score = self.params.propagate_score if self.model is not None else 0.0
        vocabulary = self.model.vocabulary if self.model is not None else frozenset()
        return [finish_spans(text, spans, min_score, vocabulary) for text, spans in zip(texts, found)]


def require_token_model(path: Path) -> None:
    """Stop with what to do when the configured PHI token model is missing; never fall back to rules silently."""
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: PHI token model not found (deidentify.model.path). medlora ships it in git: restore it with "
            f"`git checkout -- {path.parent}`, or rebuild it with `medlora deid train`; to de-identify with rules "
            "only, set deidentify.use_model: false in params.yaml")


def load_token_model(path: Path) -> TokenPhiModel:
    require_token_model(path)
    return TokenPhiModel.load(path)


def replace_spans(text: str, spans: list[PhiSpan], replacement) -> str:
    pieces, cursor = [], 0
    for span in spans:
        pieces.append(text[cursor : span.start])
        pieces.append(replacement(span, text[span.start : span.end]))
        cursor = span.end
    pieces.append(text[cursor:])
    return "".join(pieces)


def deidentify_notes(notes: pd.DataFrame, params: DeidentifyParams, key: bytes, root: Path = Path("."),
                     progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """De-identify `text` and `target` of the ingest contract; ids become keyed pseudonyms."""
    from tasks.deidentify.harness import detect_texts

    started = time.perf_counter()
    texts = notes["text"].tolist() + notes["target"].tolist()
    spans = detect_texts(texts, params, root, progress=progress)
    text_spans, target_spans = spans[: len(notes)], spans[len(notes) :]

    real_values: dict[str, set[str]] = defaultdict(set)
    for patient, text, target, t_spans, g_spans in zip(notes["patient_id"], notes["text"], notes["target"], text_spans, target_spans):
        real_values[patient] |= {text[s.start : s.end] for s in t_spans} | {target[s.start : s.end] for s in g_spans}
    surrogates = {p: PatientSurrogates(key, p, params.date_shift_days, values) for p, values in real_values.items()}

    def replacer(patient: str, issued: dict[str, set[str]], note: str):
        """Replaces a span (`note`'s case decides for values without letters); what identifiers and dates
        became goes to `issued`, by entity type."""
        def replace(span, value):
            new = f"<{span.entity_type}>" if params.replacement == "tag" else surrogates[patient].surrogate(span.entity_type, value, note=note)
            if span.entity_type in issued:
                issued[span.entity_type].add(new)
            return new
        return replace

    rows, counts = [], Counter()
    for record, t_spans, g_spans in zip(notes.to_dict(orient="records"), text_spans, target_spans):
        patient, issued = record["patient_id"], {"ID": set(), "DATE": set()}
        counts.update(s.entity_type for s in t_spans)
        rows.append({
            "note_id": "n-" + pseudonym(key, "note", record["note_id"]),
            "patient_id": "p-" + pseudonym(key, "patient", patient),
            "text": replace_spans(record["text"], t_spans, replacer(patient, issued, record["text"])),
            "target": replace_spans(record["target"], g_spans, replacer(patient, issued, record["text"])),
            # Not PHI: what identifiers and dates became (shifted dates), so the validation gate can tell a
            # surrogate MRN or date from a real one.
            "surrogate_ids": sorted(issued["ID"]),
            "surrogate_dates": sorted(issued["DATE"]),
            "specialty": record["specialty"],
            "expert": record["expert"],
            "source_row": record["source_row"],
            "phi_replaced": len(t_spans) + len(g_spans),
        })
    map_key = os.environ.get(MAP_KEY_ENV)
    map_entries = write_surrogate_map(root / MAP_FILE, surrogates, map_key) if map_key and params.replacement == "surrogate" else 0
    seconds = time.perf_counter() - started
    stats = {"notes": len(rows), "phi_spans": sum(counts.values()), "seconds": round(seconds, 2),
             "notes_per_second": round(len(rows) / seconds, 2) if seconds else 0.0, "surrogate_map_entries": map_entries,
             **{f"spans_{k.lower()}": v for k, v in sorted(counts.items())}}
    return pd.DataFrame(rows), stats
