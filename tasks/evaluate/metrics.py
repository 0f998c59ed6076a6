"""Text and answer metrics, written here so that their definitions are explicit."""

from __future__ import annotations

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
