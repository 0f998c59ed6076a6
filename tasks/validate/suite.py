"""The Great Expectations suites, run in a file context under gx/.

`raw_notes` checks the ingest contract on the kept raw notes. Over the de-identified notes, two
suites: `deidentified_notes` over the notes (schema, types, lengths, unique ids, experts, target
shorter than the note, residual PHI: structured identifiers, labelled record numbers and dates that are not
our surrogates, canaries) and `notes_per_expert` over a table of counts
(minimum records per expert); after the split, `split_leakage` proves that no patient and no duplicate
cluster lies in two splits. Every expectation runs with result_format BOOLEAN_ONLY, so no
validation result, Data Docs page or log line carries a note's content; rows that fail are named by
position and pseudonymous id. Canary strings are searched in Python and only the outcome, a boolean
column, reaches GX: the strings themselves never appear in a suite or on a Data Docs page.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tasks.params import ValidateParams
from tasks.validate.residual_phi import LABELLED_RECORD_NUMBER, RESIDUAL_PHI_PATTERNS, unissued_dates

RAW_SUITE = "raw_notes"
NOTES_SUITE = "deidentified_notes"
SPLIT_SUITE = "split_leakage"
COUNTS_SUITE = "notes_per_expert"
AUGMENTED_SUITE = "augmented_train_notes"
REQUIRED_COLUMNS = ["note_id", "patient_id", "text", "target", "specialty", "expert"]
DATA_DOCS_INDEX = Path("uncommitted/data_docs/local_site/index.html")


class ValidationGateError(RuntimeError):
    """The de-identified corpus failed the gate; the message names expectations and rows, never values."""


@dataclass
class GateOutcome:
    success: bool
    evaluated: int
    failed: list[str]
    data_docs: Path | None = None
    failed_rows: dict[str, list[int]] = field(default_factory=dict)


def holds_canary(notes: pd.DataFrame, canaries: list[str]) -> list[bool]:
    """Per row, whether its text or target contains a canary string (case ignored)."""
    lowered = [c.lower() for c in canaries if c]
    return [any(c in f"{t}\n{g}".lower() for c in lowered) for t, g in zip(notes["text"], notes["target"])]


def holds_real_record_number(notes: pd.DataFrame) -> list[bool]:
    """Per row, whether a labelled MRN or account number in it is none of the surrogates issued for the note."""
    pattern = re.compile(LABELLED_RECORD_NUMBER)
    issued = notes["surrogate_ids"] if "surrogate_ids" in notes else [()] * len(notes)
    return [any(m["id"] not in set(ids) for field in (text, target) for m in pattern.finditer(field))
            for text, target, ids in zip(notes["text"], notes["target"], issued)]


def holds_unissued_date(notes: pd.DataFrame) -> list[bool]:
    """Per row, whether its text or target holds a date that is none of the shifted dates issued for the note."""
    issued = notes["surrogate_dates"] if "surrogate_dates" in notes else [()] * len(notes)
    return [bool(unissued_dates(text, dates) or unissued_dates(target, dates))
            for text, target, dates in zip(notes["text"], notes["target"], issued)]


def gate_columns(notes: pd.DataFrame, canaries: list[str]) -> pd.DataFrame:
    """The notes with the derived columns the suites check: lengths, and whether a canary, a real record number
    or an unissued date is present."""
    return notes.assign(text_chars=notes["text"].str.len(), target_chars=notes["target"].str.len(),
                        has_canary=holds_canary(notes, canaries), has_record_number=holds_real_record_number(notes),
                        has_date=holds_unissued_date(notes))


def notes_expectations(params: ValidateParams, experts: list[str]) -> list:
    import great_expectations as gx

    e = gx.expectations
    expectations = [e.ExpectColumnToExist(column=c) for c in REQUIRED_COLUMNS]
    expectations += [e.ExpectColumnValuesToBeOfType(column=c, type_="str") for c in ("note_id", "patient_id", "text", "target")]
    expectations += [
        e.ExpectColumnValuesToBeUnique(column="note_id"),
        e.ExpectColumnValuesToNotBeNull(column="text"),
        e.ExpectColumnValueLengthsToBeBetween(column="text", min_value=params.min_text_chars, max_value=params.max_text_chars),
        e.ExpectColumnValueLengthsToBeBetween(column="target", min_value=1, max_value=params.max_target_chars),
        e.ExpectColumnPairValuesAToBeGreaterThanB(column_A="text_chars", column_B="target_chars"),
        e.ExpectColumnValuesToBeInSet(column="expert", value_set=experts),
        e.ExpectColumnValuesToBeInSet(column="has_canary", value_set=[False], meta={"residual_phi": "canary"}),
        e.ExpectColumnValuesToBeInSet(column="has_record_number", value_set=[False], meta={"residual_phi": "mrn"}),
        e.ExpectColumnValuesToBeInSet(column="has_date", value_set=[False], meta={"residual_phi": "date"}),
    ]
    for name, pattern in RESIDUAL_PHI_PATTERNS.items():
        for column in ("text", "target"):
            expectations.append(e.ExpectColumnValuesToNotMatchRegex(column=column, regex=pattern, meta={"residual_phi": name}))
    return expectations


def raw_expectations(specialties: list[str]) -> list:
    """The ingest contract, checked on the kept raw notes (in the PHI zone; results are booleans only)."""
    import great_expectations as gx

    e = gx.expectations
    return [
        *[e.ExpectColumnToExist(column=c) for c in ("note_id", "patient_id", "text", "specialty", "target", "expert")],
        *[e.ExpectColumnValuesToBeOfType(column=c, type_="str") for c in ("note_id", "patient_id", "text", "target")],
        e.ExpectColumnValuesToBeUnique(column="note_id"),
        *[e.ExpectColumnValueLengthsToBeBetween(column=c, min_value=1) for c in ("note_id", "text", "target")],
        e.ExpectColumnValuesToBeInSet(column="specialty_key", value_set=specialties),
    ]


def run_raw_suite(notes: pd.DataFrame, specialties: list[str], gx_dir: Path) -> GateOutcome:
    frame = notes.assign(specialty_key=notes["specialty"].str.strip().str.lower())
    return _outcome(_validate(gx_dir, RAW_SUITE, frame, raw_expectations(specialties)), gx_dir)


def run_split_suite(splits: dict[str, pd.DataFrame], grouped_by: tuple[str, ...], gx_dir: Path) -> GateOutcome:
    """Proof that no patient and no duplicate cluster crosses splits: one row per value, its number of splits."""
    import great_expectations as gx

    assigned = pd.concat([frame[list(grouped_by)].assign(split=name) for name, frame in splits.items()])
    frame = pd.concat([assigned.groupby(column)["split"].nunique().rename("splits").reset_index(drop=True).to_frame()
                       .assign(grouped_by=column) for column in grouped_by], ignore_index=True)
    results = _validate(gx_dir, SPLIT_SUITE, frame, [
        gx.expectations.ExpectColumnValuesToBeBetween(column="splits", min_value=1, max_value=1),
        gx.expectations.ExpectColumnValuesToBeInSet(column="grouped_by", value_set=list(grouped_by)),
    ])
    return _outcome(results, gx_dir)


def counts_expectations(params: ValidateParams, experts: list[str]) -> list:
    import great_expectations as gx

    e = gx.expectations
    return [e.ExpectColumnValuesToBeBetween(column="notes", min_value=params.min_records_per_expert),
            e.ExpectTableRowCountToEqual(value=len(experts))]


def _validate(gx_dir: Path, name: str, frame: pd.DataFrame, expectations: list) -> list:
    """Run one suite over `frame` as a checkpoint that also rebuilds the Data Docs; its expectation results."""
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction

    context = gx.get_context(mode="file", project_root_dir=str(gx_dir.parent))
    source = context.data_sources.add_or_update_pandas("medlora")
    asset = next((a for a in source.assets if a.name == name), None) or source.add_dataframe_asset(name)
    batch_definition = next((b for b in asset.batch_definitions if b.name == "all"), None) or (
        asset.add_batch_definition_whole_dataframe("all"))
    for store, key in ((context.checkpoints, name), (context.validation_definitions, name), (context.suites, name)):
        try:
            store.delete(key)
        except Exception:  # first run: nothing to delete
            pass
    suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
    definition = context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch_definition, suite=suite))
    checkpoint = context.checkpoints.add(gx.Checkpoint(
        name=name, validation_definitions=[definition], result_format="BOOLEAN_ONLY",
        actions=[UpdateDataDocsAction(name="data_docs")]))
    result = checkpoint.run(batch_parameters={"dataframe": frame})
    return [r for run in result.run_results.values() for r in run.results]


def _outcome(results: list, gx_dir: Path, extra_failures: list[str] = (), **details) -> GateOutcome:
    failed = [_describe(r.expectation_config) for r in results if not r.success] + list(extra_failures)
    docs = gx_dir / DATA_DOCS_INDEX
    return GateOutcome(success=not failed, evaluated=len(results), failed=failed,
                       data_docs=docs if docs.exists() else None, **details)


def run_suite(notes: pd.DataFrame, params: ValidateParams, experts: list[str], gx_dir: Path,
              canaries: list[str] = ()) -> GateOutcome:
    checked = gate_columns(notes, list(canaries))
    counts = pd.DataFrame({"expert": experts, "notes": [int((notes["expert"] == x).sum()) for x in experts]})
    results = (_validate(gx_dir, NOTES_SUITE, checked, notes_expectations(params, experts))
               + _validate(gx_dir, COUNTS_SUITE, counts, counts_expectations(params, experts)))
    too_few = [f"expert {x!r} has {n} notes, fewer than validate.min_records_per_expert"
               for x, n in zip(counts["expert"], counts["notes"]) if n < params.min_records_per_expert]
    outcome = _outcome(results, gx_dir, too_few)
    if not outcome.success:
        outcome.failed_rows = rows_with_residual_phi(checked)
    return outcome


def run_augmented_suite(notes: pd.DataFrame, params: ValidateParams, experts: list[str], gx_dir: Path,
                        canaries: list[str] = ()) -> GateOutcome:
    """The notes suite over a training set with synthetic examples (the augment stage's output)."""
    checked = gate_columns(notes, list(canaries))
    outcome = _outcome(_validate(gx_dir, AUGMENTED_SUITE, checked, notes_expectations(params, experts)), gx_dir)
    if not outcome.success:
        outcome.failed_rows = rows_with_residual_phi(checked)
    return outcome


def _describe(config) -> str:
    kwargs = config.kwargs
    label = config.type
    if config.meta and "residual_phi" in config.meta:
        label += f"[{config.meta['residual_phi']}]"
    column = kwargs.get("column") or "/".join(filter(None, (kwargs.get("column_A"), kwargs.get("column_B")))) or "*"
    return f"{label} on column {column!r}"


def rows_with_residual_phi(checked: pd.DataFrame) -> dict[str, list[int]]:
    """Row positions of `gate_columns` output that match each residual-PHI pattern, hold a real record number, an
    unissued date or a canary (positions only, never the match)."""
    checks = {name: re.compile(pattern) for name, pattern in RESIDUAL_PHI_PATTERNS.items()}
    found: dict[str, list[int]] = {}
    for position, (text, target) in enumerate(zip(checked["text"], checked["target"])):
        for name, compiled in checks.items():
            if compiled.search(text) or compiled.search(target):
                found.setdefault(name, []).append(position)
    for name, column in (("mrn", "has_record_number"), ("date", "has_date"), ("canary", "has_canary")):
        rows = [position for position, held in enumerate(checked[column]) if held]
        if rows:
            found[name] = rows
    return found


def gate_failure_message(outcome: GateOutcome, notes: pd.DataFrame, source: str) -> str:
    lines = [f"validation gate failed on {source}: {len(outcome.failed)} of {outcome.evaluated} expectations"]
    lines += [f"  - {failure}" for failure in outcome.failed]
    for name, rows in outcome.failed_rows.items():
        ids = ", ".join(f"row {r} (note {notes['note_id'].iloc[r]})" for r in rows[:10])
        more = f" and {len(rows) - 10} more" if len(rows) > 10 else ""
        lines.append(f"  residual PHI [{name}] in {ids}{more}")
    if outcome.data_docs:
        lines.append(f"Data Docs: {outcome.data_docs}")
    lines.append("Fix the de-identification (or the input) and re-run; no training ran on this data.")
    return "\n".join(lines)
