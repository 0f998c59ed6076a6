"""The Great Expectations suite over the de-identified notes, run in a file context under gx/.

Every expectation runs with result_format BOOLEAN_ONLY, so no validation result, Data Docs page
or log line carries a note's content; rows that fail are named by position and pseudonymous id.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tasks.params import ValidateParams
from tasks.validate.residual_phi import RESIDUAL_PHI_PATTERNS

log = logging.getLogger(__name__)

SUITE_NAME = "deidentified_notes"
REQUIRED_COLUMNS = ["note_id", "patient_id", "text", "target", "specialty", "expert"]


class ValidationGateError(RuntimeError):
    """The de-identified corpus failed the gate; the message names expectations and rows, never values."""


@dataclass
class GateOutcome:
    success: bool
    evaluated: int
    failed: list[str]


def build_expectations(params: ValidateParams, experts: list[str]) -> list:
    import great_expectations as gx

    expectations = [gx.expectations.ExpectColumnToExist(column=c) for c in REQUIRED_COLUMNS]
    expectations += [
        gx.expectations.ExpectColumnValuesToBeUnique(column="note_id"),
        gx.expectations.ExpectColumnValuesToNotBeNull(column="text"),
        gx.expectations.ExpectColumnValueLengthsToBeBetween(
            column="text", min_value=params.min_text_chars, max_value=params.max_text_chars
        ),
        gx.expectations.ExpectColumnValueLengthsToBeBetween(column="target", min_value=1, max_value=params.max_target_chars),
        gx.expectations.ExpectColumnValuesToBeInSet(column="expert", value_set=experts),
    ]
    for name, pattern in RESIDUAL_PHI_PATTERNS.items():
        for column in ("text", "target"):
            expectations.append(gx.expectations.ExpectColumnValuesToNotMatchRegex(
                column=column, regex=pattern, meta={"residual_phi": name}
            ))
    return expectations


def run_suite(notes: pd.DataFrame, params: ValidateParams, experts: list[str], gx_dir: Path) -> GateOutcome:
    import great_expectations as gx

    context = gx.get_context(mode="file", project_root_dir=str(gx_dir.parent))
    source = context.data_sources.add_or_update_pandas("medlora")
    asset = next((a for a in source.assets if a.name == "notes"), None) or source.add_dataframe_asset("notes")
    batch_definition = next((b for b in asset.batch_definitions if b.name == "all"), None) or (
        asset.add_batch_definition_whole_dataframe("all")
    )
    try:
        context.suites.delete(SUITE_NAME)
    except Exception:  # first run: nothing to delete
        pass
    suite = context.suites.add(gx.ExpectationSuite(name=SUITE_NAME, expectations=build_expectations(params, experts)))
    batch = batch_definition.get_batch(batch_parameters={"dataframe": notes})
    result = batch.validate(suite, result_format="BOOLEAN_ONLY")
    failed = [
        _describe(r.expectation_config) for r in result.results if not r.success
    ]
    return GateOutcome(success=result.success, evaluated=len(result.results), failed=failed)


def _describe(config) -> str:
    kwargs = config.kwargs
    label = config.type
    if config.meta and "residual_phi" in config.meta:
        label += f"[{config.meta['residual_phi']}]"
    return f"{label} on column {kwargs.get('column', '*')!r}"


def rows_with_residual_phi(notes: pd.DataFrame) -> dict[str, list[int]]:
    """Row positions that match each residual-PHI pattern (positions only, never the match)."""
    found: dict[str, list[int]] = {}
    for name, pattern in RESIDUAL_PHI_PATTERNS.items():
        compiled = re.compile(pattern)
        rows = [i for i, (text, target) in enumerate(zip(notes["text"], notes["target"]))
                if compiled.search(text) or compiled.search(target)]
        if rows:
            found[name] = rows
    return found


def gate_failure_message(outcome: GateOutcome, notes: pd.DataFrame, source: str) -> str:
    lines = [f"validation gate failed on {source}: {len(outcome.failed)} of {outcome.evaluated} expectations"]
    lines += [f"  - {failure}" for failure in outcome.failed]
    for name, rows in rows_with_residual_phi(notes).items():
        ids = ", ".join(f"row {r} (note {notes['note_id'].iloc[r]})" for r in rows[:10])
        more = f" and {len(rows) - 10} more" if len(rows) > 10 else ""
        lines.append(f"  residual PHI [{name}] in {ids}{more}")
    lines.append("Fix the de-identification (or the input) and re-run; no training ran on this data.")
    return "\n".join(lines)
