"""A learned PHI token classifier that weighs the evidence of every recognizer.

Regexes and context rules alone either miss PHI (names in upper-case nursing notes, "MI 92",
hospital nicknames) or flood the text with false alarms. Here each alphanumeric token gets a sparse
feature vector: its word, shape and suffix, the words around it, the name and vocabulary lists it
is in, how common it is in English, which rule recognizers and spaCy entities cover it. A
linear-chain CRF over the note's token sequence turns that into P(PHI type) per token (marginals), so
that one sure token lifts its neighbours ("WASHINGTON ADVENTIST HOSP"). Tokens above a threshold,
chosen by grouped cross-validation for a target recall, become spans.

On 487 held-out PhysioNet notes the CRF let through 43-69% of the false positives of a logistic
regression over the same features at recalls from 0.90 to 0.97, and trains as fast (about 20 s).
"""

from __future__ import annotations

import bisect
import functools
import math
import re
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import pycrfsuite
from wordfreq import zipf_frequency

from tasks.deidentify.evaluate import (
    TOKEN,  # the model classifies the very tokens the scorer counts
)
from tasks.deidentify.lexicons import CLINICAL_SHORTHAND, person_names, us_places
from tasks.deidentify.stacker import PhiStacker, with_phi

OUTSIDE = "O"

# Gold types of the corpora we train on, folded into the entity types our surrogates know.
LABELS = {
    # PhysioNet deid
    "HCPName": "PERSON", "PTName": "PERSON", "PTNameInitial": "PERSON", "RelativeProxyName": "PERSON",
    "Location": "LOCATION", "Date": "DATE", "DateYear": "DATE", "Phone": "PHONE_NUMBER", "Age": "AGE", "Other": "ID",
    # our synthetic corpus
    "PATIENT": "PERSON", "RELATIVE": "PERSON", "CLINICIAN": "PERSON", "HOSPITAL": "HOSPITAL", "CITY": "LOCATION",
    "STREET": "LOCATION", "ZIP": "LOCATION", "PHONE": "PHONE_NUMBER", "FAX": "PHONE_NUMBER", "EMAIL": "EMAIL_ADDRESS",
    "SSN": "US_SSN", "MRN": "ID", "ACCOUNT": "ID", "HEALTH_PLAN": "ID", "LICENSE": "ID", "DEVICE_ID": "ID",
    "URL": "URL", "IP": "IP_ADDRESS", "DATE": "DATE", "AGE": "AGE",
    # presidio-evaluator
    "PERSON": "PERSON", "STREET_ADDRESS": "LOCATION", "GPE": "LOCATION", "ZIP_CODE": "LOCATION", "DATE_TIME": "DATE",
    "PHONE_NUMBER": "PHONE_NUMBER", "EMAIL_ADDRESS": "EMAIL_ADDRESS", "US_SSN": "US_SSN", "CREDIT_CARD": "ID",
    "IBAN_CODE": "ID", "US_DRIVER_LICENSE": "ID", "IP_ADDRESS": "IP_ADDRESS", "DOMAIN_NAME": "URL",
}
# Gold types that are not PHI under HIPAA: their tokens are left out of training altogether.
NOT_PHI = frozenset({"ORGANIZATION", "TITLE", "NRP"})
# One of these between two tokens glues them into one chunk ("7/22", "'92").
GLUE = frozenset({"/", "-", "'"})
# Detected tokens separated by at most this much of these characters join into one span ("7/22", "Mary Ann").
JOINABLE_GAP = re.compile(r"[ \t,./'\-:#()]{0,3}")


@functools.lru_cache(maxsize=200_000)
def shape(word: str) -> str:
    out = re.sub(r"[A-Z]", "X", re.sub(r"[a-z]", "x", re.sub(r"[0-9]", "d", word)))
    return re.sub(r"(.)\1{3,}", r"\1\1\1", out)


# A date glued to a word or an arrow: "9/7-ADMITTED", "10/4-", "on10/14/82>", "UO-9/10".
GLUED_DATE = re.compile(r"[A-Za-z]{0,3}-?(\d{1,2}[/\-]\d{1,2}(?:[/\-]\d{2,4})?)(?:[\-/>]+[A-Za-z]*)?")


@functools.lru_cache(maxsize=100_000)
def _date_like(chunk: str) -> str:
    """Whether a chunk of digits reads as a valid month/day(/year), or as something else."""
    glued = GLUED_DATE.fullmatch(chunk)
    if glued and not (chunk[:1].isdigit() and chunk[-1:].isdigit()):
        chunk = glued.group(1)
    parts = re.split(r"[/\-]", chunk.strip("'"))
    if not all(p.isdigit() for p in parts) or len(parts) == 1:
        return "year" if re.fullmatch(r"'?\d{2}|(?:19|20)\d{2}", chunk) else "no"
    if len(parts) > 3:
        return "long"
    month, day = int(parts[0]), int(parts[1])
    valid = 1 <= month <= 12 and 1 <= day <= 31 and len(parts[1]) <= 2
    if len(parts) == 3:
        valid = valid and len(parts[2]) in (2, 4)
    return f"{'valid' if valid else 'invalid'}{len(parts)}"


def _chunk(text: str, start: int, end: int) -> str:
    """The whitespace-delimited chunk around a token ('7/22', '2.8'), trimmed of punctuation."""
    left = start
    while left > 0 and not text[left - 1].isspace() and start - left < 20:
        left -= 1
    right = end
    while right < len(text) and not text[right].isspace() and right - end < 20:
        right += 1
    return text[left:right].strip(",;().:*\"!?[]")  # "11/23*****", "(7/10)"


def _separator(text: str) -> str:
    if "\n" in text:
        return "NL"
    stripped = text.strip()
    return stripped[:3] if stripped else ("SP" if text else "")


def _number_class(word: str) -> str:
    if not word.isdigit():
        return ""
    value = int(word)
    if len(word) == 4:
        return "year" if 1900 <= value <= 2099 else "d4"
    if len(word) == 2 and value > 31:
        return "two_digit_high"
    if value == 0 or len(word) > 2:
        return f"d{min(len(word), 6)}"
    return "month_day" if value <= 12 else "day"


@dataclass(frozen=True)
class Evidence:
    """What other recognizers said about a stretch of text: (start, end, label).

    `sure`: the detector replaces this stretch whatever the token model says (trusted context rules,
    precise structured patterns); threshold calibration counts such tokens as found.
    """

    start: int
    end: int
    label: str
    sure: bool = False


class FeatureExtractor:
    """Sparse features of every token of a note, as strings for feature hashing.

    Word-level features (identity, shape, lists, frequency) are computed once per distinct word.
    """

    def __init__(self, vocabulary: frozenset[str]) -> None:
        self.vocabulary = vocabulary
        self.first_names, self.last_names = person_names()
        self.places = us_places()
        # Every vocabulary word with one letter dropped: finds misspelt clinical words ("hemrroids", "apetite"),
        # which otherwise look as rare as surnames.
        self.one_letter_dropped = {w[:i] + w[i + 1 :] for w in vocabulary if len(w) >= 5 for i in range(len(w))}
        self._words: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}

    def _word(self, word: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(features of the word itself, features it lends its neighbours)."""
        cached = self._words.get(word)
        if cached is None:
            w = word.lower()
            lexical = [f"w={w}"]
            if w in self.first_names:
                lexical.append("first_name")
            if w in self.last_names:
                lexical.append(f"last_name_rank={int(math.log2(self.last_names[w]))}")
            if w in self.vocabulary:
                lexical.append("clinical_word")
            word_shape = shape(word)
            own = [*lexical, f"shape={word_shape}", f"suffix={w[-3:]}", f"prefix={w[:3]}", f"len={min(len(w), 12)}",
                   f"zipf={int(zipf_frequency(w, 'en'))}", f"short_shape={word_shape[:2]}"]
            number = _number_class(word)
            if number:
                own.append(f"number={number}")
            if w in self.places:
                own.append("us_place")
            if w in self.first_names and w in self.vocabulary:
                own.append("name_and_word")
            if not (w in self.vocabulary or w.isdigit() or len(w) < 3):
                own.append("unknown_word")
                if len(w) >= 5 and self._near_vocabulary(w):
                    own.append("misspelt_word")
            cached = (tuple(own), tuple(lexical))
            if len(self._words) < 500_000:
                self._words[word] = cached
        return cached

    def _near_vocabulary(self, w: str) -> bool:
        """One insertion, deletion or substitution away from a vocabulary word."""
        dropped = [w[:i] + w[i + 1 :] for i in range(len(w))]
        return (w in self.one_letter_dropped or any(d in self.vocabulary for d in dropped)
                or any(d in self.one_letter_dropped for d in dropped))

    def note_features(self, text: str, evidence: list[Evidence]) -> tuple[list[tuple[int, int]], list[list[str]]]:
        tokens = [m.span() for m in TOKEN.finditer(text)]
        letters = sum(c.isalpha() for c in text)
        upper = sum(c.isupper() for c in text)
        case = "U" if letters and upper / letters > 0.7 else ("L" if letters and upper / letters < 0.03 else "M")
        words = [text[s:e] for s, e in tokens]
        lowers = [w.lower() for w in words]
        word_features = [self._word(w) for w in words]
        shapes = [shape(w) for w in words]

        covering: dict[int, set[str]] = defaultdict(set)
        starts = [s for s, _ in tokens]
        for item in evidence:
            index = max(bisect.bisect_right(starts, item.start) - 1, 0)
            while index < len(tokens) and tokens[index][0] < item.end:
                if tokens[index][1] > item.start:
                    covering[index].add(item.label)
                index += 1

        gaps = ["<start>", *(_separator(text[tokens[i - 1][1] : tokens[i][0]]) for i in range(1, len(tokens))), "<end>"]
        rows = []
        chunk_features: dict[str, tuple[str, str, str]] = {}
        for i, (start, end) in enumerate(tokens):
            own, _ = word_features[i]
            chunk = _chunk(text, start, end)
            if chunk not in chunk_features:
                chunk_features[chunk] = (_date_like(chunk), f"chunk={shape(chunk)}", f"chunk_date={_date_like(chunk)}")
            date_form, chunk_shape, chunk_date = chunk_features[chunk]
            previous_gap, next_gap = gaps[i], gaps[i + 1]
            f = ["bias", f"case={case}", f"case_shape={case}{shapes[i][:2]}", chunk_shape, chunk_date,
                 f"gap_before={previous_gap}", f"gap_after={next_gap}", *own]
            if "unknown_word" in own:
                f.append(f"unknown_word_{case}")
            for offset in (-2, -1, 1, 2):
                j = i + offset
                if 0 <= j < len(tokens):
                    f.extend(f"{offset}:{name}" for name in word_features[j][1])
                    if abs(offset) == 1:
                        f.append(f"{offset}:shape={shapes[j]}")
                else:
                    f.append(f"{offset}:w=<edge>")
            if words[i][0].isdigit():
                # What a number means depends on its neighbours: "MI 92", "BP 92/50", "on 9/2".
                before = lowers[i - 1] if i else "<start>"
                after = lowers[i + 1] if i + 1 < len(tokens) else "<end>"
                f += [f"date_form={date_form}|before={before}", f"date_form={date_form}|after={after}",
                      f"date_form={date_form}|gap_before={previous_gap}"]
            f.extend(f"rule={label}" for label in covering.get(i, ()))
            for offset in (-1, 1):
                f.extend(f"{offset}:rule={label}" for label in covering.get(i + offset, ()))
            rows.append(f)
        return tokens, rows


def token_labels(tokens: list[tuple[int, int]], gold_spans) -> list[str | None]:
    """The model label of each token; None for tokens of gold types that are not PHI (left out)."""
    labels = []
    for start, end in tokens:
        types = [g.entity_type for g in gold_spans if g.start < end and start < g.end]
        if not types:
            labels.append(OUTSIDE)
        elif all(t in NOT_PHI for t in types):
            labels.append(None)
        else:
            labels.append(LABELS.get(next(t for t in types if t not in NOT_PHI), "ID"))
    return labels


@dataclass
class TokenSpan:
    start: int
    end: int
    entity_type: str
    score: float


def fit_crf(sequences: list[tuple[list[list[str]], list[str]]], l1: float, l2: float, iterations: int) -> bytes:
    """A linear-chain CRF over (token features, token labels) sequences; returns the model file's bytes."""
    trainer = pycrfsuite.Trainer(verbose=False)
    for features, labels in sequences:
        trainer.append(features, labels)
    trainer.set_params({"c1": l1, "c2": l2, "max_iterations": iterations, "feature.possible_transitions": True})
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "phi.crfsuite"
        trainer.train(str(path))
        return path.read_bytes()


class TokenPhiModel:
    """A CRF over token features, optionally read through a stacker; P(PHI) of a token is one minus its
    probability of "O"."""

    def __init__(self, crf: bytes, vocabulary: frozenset[str], threshold: float, stacker: PhiStacker | None = None) -> None:
        self.crf = crf
        self.vocabulary = vocabulary
        self.threshold = threshold
        self.stacker = stacker
        self.features = FeatureExtractor(vocabulary)
        self.tagger = pycrfsuite.Tagger()
        self.tagger.open_inmemory(crf)
        self.classes = np.array(self.tagger.labels())
        self.outside_column = list(self.classes).index(OUTSIDE)

    def marginals(self, features: list[list[str]]) -> np.ndarray:
        """(tokens x labels) marginal probabilities of one note's token sequence under the CRF."""
        if not features:
            return np.zeros((0, len(self.classes)))
        self.tagger.set(features)
        return np.array([[self.tagger.marginal(label, i) for label in self.classes] for i in range(len(features))])

    def stacker_matrix(self, text: str, tokens: list[tuple[int, int]], features: list[list[str]], marginals: np.ndarray,
                       surely_found: np.ndarray, stacker: PhiStacker | None = None, nil: np.ndarray | None = None) -> np.ndarray:
        phi = phi_probability(text, tokens, marginals, self.outside_column, nil)
        words = [text[start:end] for start, end in tokens]
        return (stacker or self.stacker).note_matrix(words, features, phi, marginals, surely_found)

    def predict_many(self, texts: list[str], evidence: list[list[Evidence]]) -> list[list[TokenSpan]]:
        """PHI spans of each text given what the recognizers said about it. The stacker reads all the texts'
        tokens at once: a tree ensemble walked once per batch, not once per note."""
        readings = []
        for text, found in zip(texts, evidence):
            tokens, rows = self.features.note_features(text, found)
            readings.append((text, tokens, rows, self.marginals(rows), nil_tokens(text, tokens), surely_found(tokens, found)))
        read = [r for r in readings if len(r[1])]
        if self.stacker is not None and read:
            matrices = [self.stacker_matrix(text, tokens, rows, marginals, sure, nil=nil)
                        for text, tokens, rows, marginals, nil, sure in read]
            stacked = iter(np.split(self.stacker.phi(np.vstack(matrices)), np.cumsum([len(m) for m in matrices])[:-1]))
            readings = [(text, tokens, rows, with_phi(marginals, next(stacked), self.outside_column) if len(tokens) else marginals,
                         nil, sure) for text, tokens, rows, marginals, nil, sure in readings]
        return [spans_from_tokens(text, tokens, probabilities, self.classes, self.outside_column, self.threshold,
                                  phi_probability(text, tokens, probabilities, self.outside_column, nil))
                for text, tokens, _, probabilities, nil, _ in readings]

    def predict(self, text: str, evidence: list[Evidence]) -> list[TokenSpan]:
        return self.predict_many([text], [evidence])[0]

    def save(self, path: Path, card: dict | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        joblib.dump({"crf": self.crf, "vocabulary": sorted(self.vocabulary), "threshold": self.threshold,
                     "stacker": self.stacker, "card": card or {}}, path, compress=3)

    @classmethod
    def load(cls, path: Path) -> TokenPhiModel:
        state = joblib.load(path)
        if "stacker" not in state:
            raise ValueError(f"{path}: a PHI token model of an older medlora; retrain it with `medlora deid train`")
        return cls(state["crf"], frozenset(state["vocabulary"]), state["threshold"], state["stacker"])


def surely_found(tokens: list[tuple[int, int]], evidence: list[Evidence]) -> np.ndarray:
    """Which tokens a sure rule hit covers: the detector replaces them whatever the model says."""
    sure = [(e.start, e.end) for e in evidence if e.sure]
    return np.array([any(s < end and start < e for s, e in sure) for start, end in tokens], dtype=bool)


# "at 0400", "~ 2130": nursing notes' clock times are no PHI. 19xx and 20xx may be years and stay with the model.
CLOCK_TIME = re.compile(r"(?:0\d|1[0-8]|2[1-3])[0-5]\d")
COLON_TIME = re.compile(r"\d{1,2}:\d{2}(?:am|pm|a|p)?", re.I)
SCORE_CHUNK = re.compile(r"\d{1,2}(?:-\d{1,2})?/(?:10|5|4)")
SCORE_CONTEXT = re.compile(r"pain|c/o|#|scale|strength|rate[sd]?|discomfort|ache|\bha\b|motor|grip", re.I)
# A value right after a vital-sign, lab or ventilator label ("BP 99/40", "CVP 9-14", "pco2 38", "BIPAP 10/5"),
# or before a unit.
MEASURED_LABEL = re.compile(
    r"\b(?:bp|sbps?|dbp|nbp|abp|map|pa|pap|pad|cvp|pcwp|wedge|rr|hr|icp|cpp|po2|pco2|pao2|paco2|sao2|spo2|sats?|"
    r"fio2|peep|ps|vt|tv|ptt|inr|hct|hgb|wbc|plts?|k|na|cl|co2|bun|cr|fs|bs|temp|tmax|ci|co|svr|uo|"
    r"cpap|bipap|psv|ipap|epap|simv|imv|prvc|a/c|ac|vent|settings|flowby|ps[ ]of)[\s:=+#-]{0,3}$", re.I)
UNITS = r"mg|mcg|mcq|gm?|kg|cc|ml|mmhg|cm|mm|bpm|units?|u|meq|mmol|min|mins"
UNIT_AFTER = re.compile(rf"[ ]?(?:{UNITS})\b|%", re.I)
WITH_UNIT = re.compile(rf"\d+(?:{UNITS}|l)", re.I)  # "400mg", "750cc", "10U", "2L"


def is_measurement(text: str, start: int, end: int) -> bool:
    """Numbers that are no date: a clock time ("at 0400", "6:30"), pressures ("PA 63-70/27-30", "40/17-24"), vent
    settings ("AC/700/12/60%", "700/10/40%"), values after a vital-sign label or with a unit ("BP 99/40", "from 9 mg", "400mg"),
    and pain or strength scores ("c/o 5/10", "pain 3-4/10", "4/5 strength")."""
    if CLOCK_TIME.fullmatch(text[start:end]) or WITH_UNIT.fullmatch(text[start:end]):
        return True
    chunk = _chunk(text, start, end).lstrip("#")
    if not chunk[:1].isdigit() and not chunk[:1].isalpha():
        return False
    if COLON_TIME.fullmatch(chunk) or chunk.count("/") >= 3 or "/" in chunk and "%" in chunk:
        return True
    # "9/30-", "3/16->", "9/7-INITIAL": a date and an arrow or a word, not a range of pressures
    pieces = [piece for piece in re.split(r"[\-<>]+", chunk) if re.fullmatch(r"[\d/]+", piece)]
    if "/" in chunk and len(pieces) > 1 and not all(_date_like(piece).startswith("valid") for piece in pieces):
        return True
    at = text.find(chunk, max(0, start - len(chunk)))
    before, after = text[max(0, at - 30) : at], text[at + len(chunk) : at + len(chunk) + 20]
    # ("BC FROM 9/2 GM + COCCI" is a date before a Gram stain.)
    if chunk[:1].isdigit() and (MEASURED_LABEL.search(before) or UNIT_AFTER.match(after) and not _date_like(chunk).startswith("valid")):
        return True
    return bool(SCORE_CHUNK.fullmatch(chunk) and (SCORE_CONTEXT.search(before) or SCORE_CONTEXT.search(after)))


def nil_tokens(text: str, tokens: list[tuple[int, int]]) -> np.ndarray:
    """Tokens that are never PHI: clinical shorthand, a lone letter ("S:") and measurements."""
    nil = np.zeros(len(tokens), dtype=bool)
    for index, (start, end) in enumerate(tokens):
        word = text[start:end]
        after = text[end : end + 2]
        # "S:", "O-", "S \"I want": a SOAP header letter; but "S. Dominico", "O'Driscoll", "U Maryland" are names.
        lone_letter = len(word) == 1 and word.isalpha() and not (after[:1] in (".", "'") or (after[:1] == " " and after[1:].isalpha()))
        lone_letter = lone_letter or (len(word) == 1 and word in "LRlr" and after[:1] != ".")  # left, right: "L radial a-line"
        numeric = any(c.isdigit() for c in word) and is_measurement(text, start, end)
        nil[index] = lone_letter or word.lower() in CLINICAL_SHORTHAND or numeric
    return nil


def phi_probability(text: str, tokens: list[tuple[int, int]], probabilities: np.ndarray, outside_column: int,
                    nil: np.ndarray | None = None) -> np.ndarray:
    """P(PHI) per token: shared within a date, nil for `nil_tokens` (pass them when already known)."""
    if not len(tokens):
        return np.zeros(0)
    phi = share_within_chunks(text, tokens, 1.0 - probabilities[:, outside_column])
    phi[nil_tokens(text, tokens) if nil is None else nil] = 0.0
    return phi


def share_within_chunks(text: str, tokens: list[tuple[int, int]], probability: np.ndarray) -> np.ndarray:
    """The numbers of a valid date ("7/22", "6-19-99") share their highest probability."""
    shared = probability.copy()
    group_start = 0
    for index in range(1, len(tokens) + 1):
        glued = index < len(tokens) and text[tokens[index - 1][1] : tokens[index][0]] in GLUE
        if not glued:
            # The whole whitespace chunk decides: "12.9/21.9" holds "9/21" but is no date.
            chunk = _chunk(text, tokens[group_start][0], tokens[index - 1][1])
            if index - group_start > 1 and _date_like(chunk).startswith("valid"):
                shared[group_start:index] = probability[group_start:index].max()
            group_start = index
    return shared


def _phi_class(probabilities: np.ndarray, outside_column: int) -> int:
    without_outside = probabilities.copy()
    without_outside[outside_column] = -1
    return int(np.argmax(without_outside))


def spans_from_tokens(text, tokens, probabilities, classes, outside_column: int, threshold: float,
                      phi: np.ndarray | None = None) -> list[TokenSpan]:
    """Runs of tokens whose P(PHI) (`phi`, by default from `probabilities`) reaches `threshold`, typed by
    their summed class votes."""
    if phi is None:
        phi = phi_probability(text, tokens, probabilities, outside_column)
    spans: list[TokenSpan] = []
    type_votes: list[np.ndarray] = []
    for index, (start, end) in enumerate(tokens):
        if phi[index] < threshold:
            continue
        # A name next to a phone number ("Baker- 212- 476- 8356") is two spans of two types.
        joins = (spans and JOINABLE_GAP.fullmatch(text[spans[-1].end : start]) and tokens[index - 1][1] == spans[-1].end
                 and _phi_class(probabilities[index], outside_column) == _phi_class(probabilities[index - 1], outside_column))
        if joins:
            last = spans[-1]
            spans[-1] = TokenSpan(last.start, end, last.entity_type, max(last.score, float(phi[index])))
            type_votes[-1] = type_votes[-1] + probabilities[index]
        else:
            spans.append(TokenSpan(start, end, "", float(phi[index])))
            type_votes.append(probabilities[index].copy())
    for span, votes in zip(spans, type_votes):
        votes[outside_column] = -1
        span.entity_type = str(classes[int(np.argmax(votes))])
    return spans
