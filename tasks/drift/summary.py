"""The drift check's result as data: what the stage writes and the promotion gate reads (no Evidently here)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

DRIFT_DIR = Path("reports/drift")
SUMMARY_FILE = "summary.json"
HTML_FILE = "report.html"

DRIFTED, NOT_DRIFTED, NO_REFERENCE = "drift", "no drift", "no reference"
ATTENTION = "Attention"  # the name of a Completed state when drift blocks promotion (drift and pipeline runs)


@dataclass
class Reference:
    """The training notes of a champion: the model version, the data version it was trained on and the drift
    run that logged the features of that data."""

    model: str
    version: str
    data_version: str
    run_id: str | None = None
    notes: int | None = None


@dataclass
class ColumnDrift:
    column: str
    method: str
    score: float
    threshold: float
    drifted: bool


@dataclass
class DriftSummary:
    status: str                     # drift | no drift | no reference
    blocking: bool                  # whether the promotion gate fails on it
    reason: str                     # for people: what drifted, by how much, against what
    data_version: str               # DVC version of data/validated this run read
    current_notes: int
    reference: Reference | None = None
    drift_share: float | None = None          # share of the columns that drifted
    drift_share_threshold: float | None = None
    columns: list[ColumnDrift] = field(default_factory=list)
    mlflow_run_id: str | None = None

    @property
    def drifted_columns(self) -> list[str]:
        return [c.column for c in self.columns if c.drifted]

    def as_dict(self) -> dict:
        return asdict(self) | {"drifted_columns": self.drifted_columns}

    def write(self, root: Path) -> Path:
        path = root / DRIFT_DIR / SUMMARY_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.as_dict(), indent=2))
        return path


def read_summary(root: Path) -> dict | None:
    """The last drift check's summary as written, or None when the drift stage has not run here."""
    path = root / DRIFT_DIR / SUMMARY_FILE
    return json.loads(path.read_text()) if path.exists() else None
