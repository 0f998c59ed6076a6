"""Read raw notes (CSV, JSONL, Parquet) into the ingest contract, quarantining what cannot be used.

Every input record ends up in exactly one of two files, both inside the PHI zone (data/raw/):
the kept notes, or the quarantine with a reason that names the row and the column. Row numbers
are 1-based data records (a CSV's header is not counted; for JSONL, the line number).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tasks.params import ColumnMapping

log = logging.getLogger(__name__)

FIELDS = ("note_id", "patient_id", "text", "specialty", "target")
REQUIRED_FIELDS = ("note_id", "text", "specialty", "target")
KEPT_COLUMNS = ["note_id", "patient_id", "text", "specialty", "expert", "target", "source_row"]


class InputFileError(ValueError):
    """The file as a whole cannot be read: wrong format, missing columns, unreadable."""


@dataclass
class IngestResult:
    kept: pd.DataFrame
    quarantined: pd.DataFrame  # source_row, column, reason, raw (the row as JSON; PHI zone only)

    @property
    def counts(self) -> dict[str, int]:
        return {"read": len(self.kept) + len(self.quarantined), "kept": len(self.kept), "quarantined": len(self.quarantined)}

    def reasons(self) -> dict[str, int]:
        return dict(Counter(self.quarantined["reason_code"])) if len(self.quarantined) else {}


def detect_format(path: Path, declared: str = "auto") -> str:
    if declared != "auto":
        return declared
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return "csv"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise InputFileError(
        f"{path}: cannot tell the format from the suffix {suffix!r}; set input.format to csv, jsonl or parquet"
    )


def _read_jsonl(path: Path) -> tuple[list[dict | None], list[int]]:
    """Rows as dicts (None for a line that is not a JSON object) and their line numbers."""
    rows, numbers = [], []
    with open(path, "rb") as handle:
        for number, raw_line in enumerate(handle, start=1):
            line = raw_line.decode("utf-8", errors="replace").strip()
            if not line:
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                value = None
            rows.append(value if isinstance(value, dict) else None)
            numbers.append(number)
    return rows, numbers


def read_raw_table(path: Path, file_format: str) -> tuple[list[dict | None], list[int]]:
    if not path.exists():
        raise InputFileError(f"{path}: input file not found (input.path in params.yaml)")
    try:
        if file_format == "jsonl":
            return _read_jsonl(path)
        if file_format == "csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding_errors="replace",
                                sep="\t" if path.suffix.lower() == ".tsv" else ",")
        else:
            frame = pd.read_parquet(path)
    except InputFileError:
        raise
    except Exception as error:  # pandas and pyarrow raise many types; the user needs the file and why
        raise InputFileError(f"{path}: cannot be read as {file_format}: {type(error).__name__}: {error}") from None
    return frame.to_dict(orient="records"), list(range(1, len(frame) + 1))


def _check_columns(path: Path, rows: list[dict | None], columns: ColumnMapping) -> None:
    present: set[str] = set()
    for row in rows:
        if row is not None:
            present |= set(row)
    missing = [
        f"{getattr(columns, field)!r} (input.columns.{field})"
        for field in FIELDS
        if getattr(columns, field) is not None and getattr(columns, field) not in present
    ]
    if missing and rows:
        raise InputFileError(
            f"{path}: column {', '.join(missing)} not found; the file has columns {sorted(present)[:30]}. "
            "Fix the column mapping under input.columns in params.yaml."
        )


def _as_text(value) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    return str(value).strip()


def ingest_notes(path: Path, file_format: str, columns: ColumnMapping, expert_for_specialty: dict[str, str]) -> IngestResult:
    file_format = detect_format(path, file_format)
    rows, row_numbers = read_raw_table(path, file_format)
    _check_columns(path, rows, columns)
    row_word = "line" if file_format == "jsonl" else "row"

    kept, quarantined = [], []
    seen_ids: dict[str, int] = {}

    def quarantine(number: int, row, column: str, code: str, reason: str, value: str = "") -> None:
        """The log names file, row and column only; the offending value (raw, maybe PHI) stays in the PHI zone."""
        message = f"{path.name} {row_word} {number}, column {column!r}: {reason}"
        log.warning("quarantined %s", message)
        quarantined.append(
            {"source_row": number, "column": column, "reason_code": code, "reason": f"{message} ({value})" if value else message,
             "raw": json.dumps(row, default=str) if row is not None else ""}
        )

    for number, row in zip(row_numbers, rows):
        if row is None:
            quarantine(number, None, "*", "not_json_object", "not a JSON object")
            continue
        record = {field: _as_text(row.get(getattr(columns, field))) if getattr(columns, field) else "" for field in FIELDS}
        undecodable = [field for field in FIELDS if "\ufffd" in record[field]]
        if undecodable:
            field = undecodable[0]
            quarantine(number, row, getattr(columns, field), "invalid_utf8",
                       f"{field} holds bytes that are not UTF-8 (shown as U+FFFD); fix the file's encoding")
            continue
        empty = [field for field in REQUIRED_FIELDS if not record[field]]
        if empty:
            field = empty[0]
            quarantine(number, row, getattr(columns, field), f"empty_{field}", f"{field} is empty")
            continue
        expert = expert_for_specialty.get(record["specialty"].lower())
        if expert is None:
            quarantine(
                number, row, columns.specialty, "unmapped_specialty",
                "the specialty belongs to no expert (experts in params.yaml)", f"specialty {record['specialty'][:40]!r}",
            )
            continue
        if record["note_id"] in seen_ids:
            quarantine(
                number, row, columns.note_id, "duplicate_note_id",
                f"note id already used by {row_word} {seen_ids[record['note_id']]}",
            )
            continue
        seen_ids[record["note_id"]] = number
        record["patient_id"] = record["patient_id"] or f"note-{record['note_id']}"
        kept.append({**record, "expert": expert, "source_row": number})

    return IngestResult(
        kept=pd.DataFrame(kept, columns=KEPT_COLUMNS),
        quarantined=pd.DataFrame(quarantined, columns=["source_row", "column", "reason_code", "reason", "raw"]),
    )
