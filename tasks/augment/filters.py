"""The screens every synthetic candidate passes, in order; each rejection is counted under its reason.

structure      lengths the validate suite requires (text, target, a target shorter than its note)
residual_phi   the validate gate's residual-PHI checks (identifier patterns, record numbers and dates not issued
               by de-identification, canaries)
unsupported    a target that names a diagnosis, drug or procedure its note does not (evaluation's check)
near_training  a generated note within augment.near_duplicate_similarity (MinHash) of a real training note
near_heldout   a note within augment.leakage_similarity (MinHash) or augment.leakage_rouge_l (ROUGE-L) of any
               validation or test note: nothing synthetic may leak into evaluation
not_diverse    ROUGE-L of at least augment.diversity_rouge_l to an accepted candidate of the expert (Self-Instruct),
               or, for a new summary, to the note's own target
not_fluent     a generated note whose perplexity under the base model is above augment.fluency_quantile of the
               expert's real training notes'
over_cap       beyond augment.max_synthetic_share of the expert's training examples
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from tasks.evaluate.clinical_terms import unsupported_entities
from tasks.evaluate.metrics import rouge_l
from tasks.params import AugmentParams, ValidateParams
from tasks.validate.duplicates import NearDuplicateIndex, near_duplicates_of
from tasks.validate.suite import gate_columns, rows_with_residual_phi

REASONS = ("structure", "residual_phi", "unsupported", "near_training", "near_heldout", "not_diverse", "not_fluent",
           "over_cap")
GENERATED_NOTES = ("fewshot_notes",)  # methods whose note is written by a model (the others keep a real note's words)
_WORDS = re.compile(r"[a-z0-9]+")  # rouge-score's tokens: lower-cased runs of letters and digits


def _bag(text: str) -> Counter:
    return Counter(_WORDS.findall(text.lower()))


def max_rouge_l(text: str, references: Sequence[str], bags: Sequence[Counter] | None = None, at_least: float = 0.0) -> float:
    """The highest ROUGE-L F1 of `text` against `references`, exact where it reaches `at_least`. ROUGE-L is computed
    only where the unigram-overlap F1 (an upper bound: a common subsequence is a common multiset) reaches it."""
    bag = _bag(text)
    size = sum(bag.values())
    best = 0.0
    for index, reference in enumerate(references):
        other = bags[index] if bags is not None else _bag(reference)
        total = size + sum(other.values())
        bound = 2 * sum((bag & other).values()) / total if total else 0.0
        if bound >= max(at_least, best) and bound > 0:
            best = max(best, rouge_l(text, reference))
    return best


class HeldOut:
    """The validation and test notes, indexed once per stage run: nothing synthetic may come near one of them
    (MinHash at augment.leakage_similarity, or ROUGE-L at augment.leakage_rouge_l)."""

    def __init__(self, texts: list[str], settings: AugmentParams, seed: int) -> None:
        self.texts, self.settings = texts, settings
        self.bags = [_bag(t) for t in texts]
        self.index = NearDuplicateIndex(texts, settings.leakage_similarity, seed)

    def near(self, texts: Sequence[str]) -> list[bool]:
        limit = self.settings.leakage_rouge_l
        return [bool(found) or max_rouge_l(text, self.texts, self.bags, limit) >= limit
                for text, found in zip(texts, self.index.query(list(texts)))]


def structure_ok(frame: pd.DataFrame, validate: ValidateParams) -> list[bool]:
    text_chars, target_chars = frame["text"].str.len(), frame["target"].str.strip().str.len()
    return list((text_chars >= validate.min_text_chars) & (text_chars <= validate.max_text_chars) & (target_chars >= 1)
                & (target_chars <= validate.max_target_chars) & (target_chars < text_chars))


def residual_phi_rows(frame: pd.DataFrame, canaries: list[str]) -> set[int]:
    return {row for rows in rows_with_residual_phi(gate_columns(frame.reset_index(drop=True), canaries)).values() for row in rows}


def screen(candidates: pd.DataFrame, real_train: pd.DataFrame, heldout: HeldOut, settings: AugmentParams,
           validate: ValidateParams, canaries: list[str], perplexity: Callable[[list[str]], list[float]],
           seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(accepted candidates, rejected candidates with a `reason` column), for one expert's candidates."""
    frame = candidates.reset_index(drop=True)
    reasons: list[str | None] = [None] * len(frame)

    def reject(rows, reason: str) -> None:
        for row in rows:
            if reasons[row] is None:
                reasons[row] = reason

    def alive() -> list[int]:
        return [row for row in range(len(frame)) if reasons[row] is None]

    reject([row for row, ok in enumerate(structure_ok(frame, validate)) if not ok], "structure")
    reject(sorted(residual_phi_rows(frame, canaries)), "residual_phi")
    reject([row for row in alive() if unsupported_entities(frame.at[row, "text"], frame.at[row, "target"])], "unsupported")

    generated = [row for row in alive() if frame.at[row, "method"] in GENERATED_NOTES]
    near = near_duplicates_of([frame.at[row, "text"] for row in generated], list(real_train["text"]),
                              settings.near_duplicate_similarity, seed)
    reject([row for row, found in zip(generated, near) if found], "near_training")

    rows = alive()
    reject([row for row, near in zip(rows, heldout.near([frame.at[row, "text"] for row in rows])) if near], "near_heldout")

    own_target = dict(zip(real_train["note_id"], real_train["target"]))
    accepted: dict[str, list[str]] = {}
    for row in alive():
        method = frame.at[row, "method"]
        field = "target" if method == "back_summaries" else "text"
        value = frame.at[row, field]
        earlier = accepted.setdefault(f"{method}/{field}", [])
        if method == "back_summaries":
            earlier = [*earlier, own_target.get(frame.at[row, "source_note_id"], "")]
        if max_rouge_l(value, earlier, at_least=settings.diversity_rouge_l) >= settings.diversity_rouge_l:
            reject([row], "not_diverse")
        else:
            accepted[f"{method}/{field}"].append(value)

    generated = [row for row in alive() if frame.at[row, "method"] in GENERATED_NOTES]
    if generated:
        limit = fluency_limit(perplexity(list(real_train["text"])), settings.fluency_quantile)
        scores = perplexity([frame.at[row, "text"] for row in generated])
        reject([row for row, score in zip(generated, scores) if not score <= limit], "not_fluent")

    cap = math.floor(settings.max_synthetic_share / (1 - settings.max_synthetic_share) * len(real_train) + 1e-9)
    reject(alive()[cap:], "over_cap")
    frame["reason"] = reasons
    kept = frame[frame["reason"].isna()].drop(columns="reason")
    return kept, frame[frame["reason"].notna()]


def fluency_limit(real_perplexities: list[float], quantile: float) -> float:
    """The perplexity a generated note may reach: the quantile of the real notes' (their own spread sets it)."""
    finite = [p for p in real_perplexities if math.isfinite(p)]
    return float(np.quantile(finite, quantile)) if finite else math.inf
