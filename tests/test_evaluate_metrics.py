"""Library-backed metrics (rouge-score, scikit-learn) give the figures our hand-written versions gave.

Every expected value below was printed by the hand-written ROUGE-L (LCS over [a-z0-9]+ words),
accuracy, macro-F1 and confusion matrix just before they were replaced.
"""

from __future__ import annotations

import pytest

from tasks.evaluate.metrics import accuracy, macro_f1, rouge_l
from tasks.route.evaluate import confusion_matrix

ANSWERS = ("yes", "no", "maybe")


@pytest.mark.parametrize(("prediction", "reference", "expected"), [
    ("the cat sat on the mat", "the cat is on the mat", 0.8333333333333334),
    ("", "", 0.0),
    ("", "something", 0.0),
    ("abc", "", 0.0),
    ("Patient denies chest-pain.", "patient denies chest pain", 1.0),
    ("running runs ran", "run running", 0.4),  # no stemming: "runs" is not "run"
    ("metoprolol 25 mg BID; no fever", "No fever, on metoprolol 25mg", 0.3636363636363636),
    ("A B C D", "D C B A", 0.25),
    ("x y z", "a b c", 0.0),
    ("The patient's blood pressure was 120/80", "blood pressure 120 80 patients", 0.6153846153846154),
    ("naïve café über", "naive cafe uber", 0.0),  # non-ASCII letters split words, as before
    ("hello_world foo", "hello world foo", 1.0),
])
def test_rouge_l_equals_the_hand_written_lcs_f1(prediction, reference, expected):
    assert rouge_l(prediction, reference) == pytest.approx(expected, abs=1e-12)


def test_rouge_l_is_not_symmetric_in_name_only():
    # Precision is over the prediction, recall over the reference; F1 is symmetric, so swapping agrees.
    assert rouge_l("a b c d e", "a c") == pytest.approx(rouge_l("a c", "a b c d e")) == pytest.approx(4 / 7)


@pytest.mark.parametrize(("predictions", "labels", "expected_accuracy", "expected_f1"), [
    (["yes", "no", "maybe"], ["yes", "no", "maybe"], 1.0, 1.0),
    (["yes", "yes", "yes"], ["yes", "no", "maybe"], 1 / 3, 1 / 6),
    ([], [], 0.0, 0.0),
    (["yes", "yes"], ["yes", "yes"], 1.0, 1 / 3),  # one class: the two absent ones score 0
    (["no", "no", "yes", "maybe"], ["yes", "no", "yes", "no"], 0.5, 0.38888888888888884),
    (["unknown", "yes"], ["yes", "yes"], 0.5, 0.2222222222222222),  # an answer outside the three
    (["maybe", "maybe"], ["no", "yes"], 0.0, 0.0),
])
def test_accuracy_and_macro_f1_equal_the_hand_written_ones(predictions, labels, expected_accuracy, expected_f1):
    assert accuracy(predictions, labels) == pytest.approx(expected_accuracy, abs=1e-12)
    assert macro_f1(predictions, labels, ANSWERS) == pytest.approx(expected_f1, abs=1e-12)


def test_confusion_matrix_rows_are_true_experts_and_unused_experts_keep_their_row():
    assert confusion_matrix([0, 1, 2, 2], [0, 2, 2, 1], 3) == [[1, 0, 0], [0, 0, 1], [0, 1, 1]]
    assert confusion_matrix([1, 1], [1, 1], 3) == [[0, 0, 0], [0, 2, 0], [0, 0, 0]]
    assert confusion_matrix([], [], 2) == [[0, 0], [0, 0]]
    assert all(type(v) is int for row in confusion_matrix([0, 1], [1, 1], 2) for v in row)
