"""The validation gate as one plain function: cleanse, quarantine, cluster duplicates, run the GX
suites, split without leakage and prove it.

Nothing is dropped silently: every row read is either kept (and lands in exactly one split) or
quarantined with a reason, and `GateResult.counts` shows that read = kept + quarantined.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tasks.params import ValidateParams
from tasks.validate.cleanse import cleanse_text
from tasks.validate.duplicates import duplicate_clusters
from tasks.validate.quarantine import RESIDUAL_DATE, quarantine_failing_rows
from tasks.validate.split import GROUPED_BY, split_grouped, values_crossing_splits
from tasks.validate.suite import GateOutcome, ValidationGateError, gate_failure_message, run_split_suite, run_suite


@dataclass
class GateResult:
    quarantined: pd.DataFrame
    outcome: GateOutcome | None = None
    splits: dict[str, pd.DataFrame] = field(default_factory=dict)
    counts: dict[str, int | float] = field(default_factory=dict)
    error: str | None = None  # why the gate failed, naming expectations and rows, never values

    @property
    def passed(self) -> bool:
        return self.error is None


def duplicate_report(notes: pd.DataFrame) -> dict[str, int]:
    sizes = notes.groupby("duplicate_cluster").size()
    specialties = notes.groupby("duplicate_cluster")["specialty"].nunique()
    return {"duplicate_clusters": int((sizes > 1).sum()), "notes_in_duplicate_clusters": int(sizes[sizes > 1].sum()),
            "duplicate_clusters_across_specialties": int((specialties > 1).sum())}


def read_canaries(path: Path) -> list[str]:
    if not path.exists():
        raise FileNotFoundError(f"{path}: canary file not found (validate.canaries_file in params.yaml)")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def run_gate(read: pd.DataFrame, params: ValidateParams, experts: list[str], gx_dir: Path, seed: int,
             source: str, canaries: list[str] = ()) -> GateResult:
    cleansed = read.assign(text=[cleanse_text(t, params.expand_abbreviations) for t in read["text"]],
                           target=[cleanse_text(t, params.expand_abbreviations) for t in read["target"]])
    notes, quarantined = quarantine_failing_rows(cleansed, params)
    result = GateResult(quarantined=quarantined)
    share = len(quarantined) / len(read) if len(read) else 0.0
    result.counts = {"read": len(read), "kept": len(notes), "quarantined": len(quarantined),
                     "quarantined_share": round(share, 4),
                     "quarantined_residual_date": int((quarantined["expectation"] == RESIDUAL_DATE).sum())}
    if not len(notes) or share > params.max_quarantined_share:
        result.error = (f"validation gate failed on {source}: {len(quarantined)} of {len(read)} notes quarantined "
                        f"({share:.1%}), more than validate.max_quarantined_share ({params.max_quarantined_share:.0%}); "
                        "see data/quarantine/validate.parquet for the row and expectation of each")
        return result
    notes["duplicate_cluster"] = duplicate_clusters(notes["text"].tolist(), params.near_duplicate_similarity, seed)
    result.counts |= duplicate_report(notes)
    result.outcome = run_suite(notes, params, experts, gx_dir, list(canaries))
    if not result.outcome.success:
        result.error = gate_failure_message(result.outcome, notes, source)
        return result
    result.splits = split_grouped(notes, params.split, seed)
    leaking = {column: values_crossing_splits(result.splits, column) for column in GROUPED_BY}
    if any(leaking.values()) or not run_split_suite(result.splits, GROUPED_BY, gx_dir).success:
        raise ValidationGateError(f"the split is broken: {', '.join(f'{len(v)} {k}' for k, v in leaking.items())} "
                                  "values fall in more than one split")
    result.counts |= {f"{name}_notes": len(frame) for name, frame in result.splits.items()}
    return result
