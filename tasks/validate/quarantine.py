"""Row-level checks: rows that fail them leave the corpus for data/quarantine/ with the reason.

The reason names the row, the pseudonymous note id and the failed expectation, never the value.
The same expectations then run in the GX suite over the kept rows, as proof that they hold.
"""

from __future__ import annotations

import pandas as pd

from tasks.params import ValidateParams

QUARANTINE_COLUMNS = ["source_row", "note_id", "expectation", "reason"]


def quarantine_failing_rows(notes: pd.DataFrame, params: ValidateParams) -> tuple[pd.DataFrame, pd.DataFrame]:
    checks = [
        ("text", notes["text"].str.len().between(params.min_text_chars, params.max_text_chars),
         f"text length outside [{params.min_text_chars}, {params.max_text_chars}]"),
        ("target", notes["target"].str.len().between(1, params.max_target_chars),
         f"target length outside [1, {params.max_target_chars}]"),
    ]
    failed_reason = pd.Series("", index=notes.index)
    for column, passed, reason in checks:
        message = f"expect_column_value_lengths_to_be_between on column {column!r}: {reason}"
        failed_reason = failed_reason.where(passed | (failed_reason != ""), message)
    failing = failed_reason != ""
    quarantined = pd.DataFrame({
        "source_row": notes.loc[failing, "source_row"],
        "note_id": notes.loc[failing, "note_id"],
        "expectation": failed_reason[failing].str.split(":").str[0],
        "reason": [f"row {r} (note {n}): {m}" for r, n, m in
                   zip(notes.loc[failing, "source_row"], notes.loc[failing, "note_id"], failed_reason[failing])],
    }, columns=QUARANTINE_COLUMNS)
    return notes[~failing].reset_index(drop=True), quarantined.reset_index(drop=True)
