"""Text and answer metrics, written here so that their definitions are explicit."""

from __future__ import annotations

import math
import re

WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def longest_common_subsequence(a: list[str], b: list[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 over lower-cased alphanumeric words (no stemming)."""
    predicted, expected = words(prediction), words(reference)
    common = longest_common_subsequence(predicted, expected)
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def accuracy(predictions: list[str], labels: list[str]) -> float:
    return sum(p == label for p, label in zip(predictions, labels)) / len(labels) if labels else 0.0


def macro_f1(predictions: list[str], labels: list[str], classes: tuple[str, ...]) -> float:
    scores = []
    for cls in classes:
        true_positive = sum(p == cls == label for p, label in zip(predictions, labels))
        predicted, actual = predictions.count(cls), labels.count(cls)
        scores.append(2 * true_positive / (predicted + actual) if predicted + actual else 0.0)
    return sum(scores) / len(scores)


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
