"""Text and answer metrics: ROUGE-L from `rouge-score`, classification scores from scikit-learn;
perplexity and calibration are written out here because their definitions are the point."""

from __future__ import annotations

import math
from functools import cache

from rouge_score import rouge_scorer
from sklearn.metrics import accuracy_score, f1_score


@cache
def _rouge_l_scorer() -> rouge_scorer.RougeScorer:
    # Google's tokenizer: lower case, runs of [a-z0-9] as words. No stemming, so "runs" and "run"
    # differ, as in our scores before the library (equal to 1e-12 on tests/test_evaluate.py's cases).
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 over lower-cased alphanumeric words (no stemming); 0.0 when either side has no word."""
    return float(_rouge_l_scorer().score(reference, prediction)["rougeL"].fmeasure)


def accuracy(predictions: list[str], labels: list[str]) -> float:
    """Share of exact matches; 0.0 for no labels."""
    return float(accuracy_score(labels, predictions)) if labels else 0.0


def macro_f1(predictions: list[str], labels: list[str], classes: tuple[str, ...]) -> float:
    """Mean F1 over `classes`, each counted even when absent (its F1 is then 0); predictions outside
    `classes` only count as misses."""
    if not labels:
        return 0.0
    return float(f1_score(labels, predictions, labels=list(classes), average="macro", zero_division=0.0))


def perplexity(summed_losses: list[float], token_counts: list[int]) -> float:
    """exp of the mean next-token loss over every target token (not the mean of per-example perplexities)."""
    tokens = sum(token_counts)
    return math.exp(sum(summed_losses) / tokens) if tokens else float("nan")


def expected_calibration_error(confidences: list[float], correct: list[bool], bins: int = 10) -> float:
    """Sum over equal-width confidence bins of |accuracy - mean confidence|, weighted by the bin's share."""
    if not confidences:
        return float("nan")
    error = 0.0
    for low in range(bins):
        members = [i for i, c in enumerate(confidences)
                   if low / bins < c <= (low + 1) / bins or (low == 0 and c == 0)]
        if members:
            accuracy_in_bin = sum(correct[i] for i in members) / len(members)
            confidence_in_bin = sum(confidences[i] for i in members) / len(members)
            error += len(members) / len(confidences) * abs(accuracy_in_bin - confidence_in_bin)
    return error


def separation_auroc(signal: list[float], wrong: list[bool]) -> float | None:
    """How well a higher `signal` picks out wrong answers (0.5: not at all); None without both kinds."""
    if len(set(wrong)) < 2:
        return None
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(wrong, signal))
