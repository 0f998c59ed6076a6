"""Row-level checks: rows that fail them leave the corpus for data/quarantine/ with the reason.

Each check is named after the GX expectation it stands for; the same expectations then run in the
GX suite over the kept rows, as proof that they hold. The reason names the source row, the
pseudonymous note id and the failed expectation, never the value. A row failing several checks is
quarantined once, for the first.

A date that de-identification did not issue is quarantined, unlike the other residual PHI, which fails the
table: the date check is a heuristic that some measurements and scores still fool, and a note with a missed date
is kept out of training either way. A detector that misses dates widely still fails the gate through
validate.max_quarantined_share.
"""

from __future__ import annotations

import pandas as pd

from tasks.params import ValidateParams
from tasks.validate.cleanse import has_invalid_encoding
from tasks.validate.suite import holds_unissued_date

QUARANTINE_COLUMNS = ["source_row", "note_id", "expectation", "reason"]
RESIDUAL_DATE = "expect_column_values_to_be_in_set[date] on column 'has_date'"


def _row_checks(notes: pd.DataFrame, params: ValidateParams) -> list[tuple[str, pd.Series, str]]:
    """(expectation on column, passed per row, why) in the order a failing row is reported."""
    text_chars, target_chars = notes["text"].str.len(), notes["target"].str.len()
    encoded = ~notes["text"].map(has_invalid_encoding) & ~notes["target"].map(has_invalid_encoding)
    return [
        ("expect_column_values_to_be_unique on column 'note_id'", ~notes["note_id"].duplicated(),
         "the note id repeats an earlier row's"),
        ("expect_column_values_to_not_match_regex[invalid_utf8] on column 'text'", encoded,
         "the text or target held bytes that are not UTF-8"),
        ("expect_column_value_lengths_to_be_between on column 'text'",
         text_chars.between(params.min_text_chars, params.max_text_chars),
         f"text length outside [{params.min_text_chars}, {params.max_text_chars}]"),
        ("expect_column_value_lengths_to_be_between on column 'target'", target_chars.between(1, params.max_target_chars),
         f"target length outside [1, {params.max_target_chars}]"),
        ("expect_column_pair_values_a_to_be_greater_than_b on column 'text_chars/target_chars'", text_chars > target_chars,
         "the target is not shorter than the note"),
        (RESIDUAL_DATE, ~pd.Series(holds_unissued_date(notes), index=notes.index),
         "a date that is none of the shifted dates de-identification issued for the note"),
    ]


def quarantine_failing_rows(notes: pd.DataFrame, params: ValidateParams) -> tuple[pd.DataFrame, pd.DataFrame]:
    expectation = pd.Series("", index=notes.index)
    why = pd.Series("", index=notes.index)
    for name, passed, reason in _row_checks(notes, params):
        newly_failed = ~passed & (expectation == "")
        expectation[newly_failed], why[newly_failed] = name, reason
    failing = expectation != ""
    rows, ids = notes.loc[failing, "source_row"], notes.loc[failing, "note_id"]
    quarantined = pd.DataFrame({
        "source_row": rows,
        "note_id": ids,
        "expectation": expectation[failing],
        "reason": [f"row {r} (note {n}): {e}: {w}" for r, n, e, w in zip(rows, ids, expectation[failing], why[failing])],
    }, columns=QUARANTINE_COLUMNS)
    return notes[~failing].reset_index(drop=True), quarantined.reset_index(drop=True)
