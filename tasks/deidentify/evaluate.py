"""Binary token-level scoring of detected PHI against gold spans.

Tokens are alphanumeric runs. A token is PHI if it overlaps a gold span, and detected if it overlaps
a detected span, whatever the entity types. Recall per gold type says which kinds of PHI get through.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tasks.deidentify.corpora import GoldNote

TOKEN = re.compile(r"[A-Za-z0-9]+")

# presidio-evaluator types that HIPAA's eighteen identifiers name. AGE is left out because HIPAA
# names only ages over 89, and ORGANIZATION, TITLE and NRP are not identifiers under HIPAA.
HIPAA_PRESIDIO_TYPES = frozenset({
    "PERSON", "STREET_ADDRESS", "GPE", "ZIP_CODE", "DATE_TIME", "PHONE_NUMBER", "EMAIL_ADDRESS", "US_SSN",
    "CREDIT_CARD", "IBAN_CODE", "US_DRIVER_LICENSE", "IP_ADDRESS", "DOMAIN_NAME",
})


def scored_types(corpus_format: str, path: str | Path, types: str = "auto") -> frozenset[str] | None:
    """The gold types a corpus is scored on: HIPAA's for presidio-evaluator data (or when asked), else all."""
    is_presidio = corpus_format == "presidio" or (corpus_format == "auto" and Path(path).suffix == ".json")
    return HIPAA_PRESIDIO_TYPES if types == "hipaa" or (types == "auto" and is_presidio) else None


@dataclass
class TokenScores:
    true_positives: int = 0
    false_positives: int = 0
    false_negatives: int = 0
    gold_by_type: Counter = field(default_factory=Counter)
    found_by_type: Counter = field(default_factory=Counter)

    @property
    def recall(self) -> float:
        gold = self.true_positives + self.false_negatives
        return self.true_positives / gold if gold else 1.0

    @property
    def precision(self) -> float:
        detected = self.true_positives + self.false_positives
        return self.true_positives / detected if detected else 1.0

    def f_beta(self, beta: float = 2.0) -> float:
        p, r = self.precision, self.recall
        return (1 + beta**2) * p * r / (beta**2 * p + r) if p + r else 0.0

    def summary(self) -> dict:
        return {
            "recall": round(self.recall, 4), "precision": round(self.precision, 4), "f2": round(self.f_beta(2), 4),
            "phi_tokens": self.true_positives + self.false_negatives,
            "true_positives": self.true_positives, "false_positives": self.false_positives,
            "false_negatives": self.false_negatives,
            "recall_by_type": {t: round(self.found_by_type[t] / n, 4) for t, n in sorted(self.gold_by_type.items())},
            "tokens_by_type": dict(sorted(self.gold_by_type.items())),
        }


def _covered(intervals: list[tuple[int, int]], start: int, end: int) -> bool:
    return any(s < end and start < e for s, e in intervals)


def score_note(text: str, gold: list, detected: list, scores: TokenScores, types: frozenset[str] | None = None) -> list[tuple[int, int, str]]:
    """Add one note's tokens to `scores`; returns the missed tokens as (start, end, gold type).

    With `types`, tokens of gold spans of other types are left out of the count altogether.
    """
    detected_intervals = [(s.start, s.end) for s in detected]
    missed = []
    for token in TOKEN.finditer(text):
        start, end = token.span()
        gold_types = [g.entity_type for g in gold if g.start < end and start < g.end]
        if types is not None and gold_types and not set(gold_types) & types:
            continue
        is_detected = _covered(detected_intervals, start, end)
        if gold_types:
            gold_type = next((t for t in gold_types if types is None or t in types), gold_types[0])
            scores.gold_by_type[gold_type] += 1
            if is_detected:
                scores.true_positives += 1
                scores.found_by_type[gold_type] += 1
            else:
                scores.false_negatives += 1
                missed.append((start, end, gold_type))
        elif is_detected:
            scores.false_positives += 1
    return missed


def score_corpus(notes: list[GoldNote], detected: list[list], types: frozenset[str] | None = None) -> TokenScores:
    scores = TokenScores()
    for note, spans in zip(notes, detected, strict=True):
        score_note(note.text, note.spans, spans, scores, types)
    return scores
