"""The drift report: Evidently's DataDriftPreset, with a pass/fail test per column and one on the share of
drifted columns, over the derived features of tasks/drift/features.py (no text column ever reaches it)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tasks.drift.features import CATEGORICAL, FEATURES, NUMERICAL
from tasks.drift.summary import DRIFTED, NO_REFERENCE, NOT_DRIFTED, ColumnDrift, DriftSummary, Reference
from tasks.params import DriftParams

PASSED = "SUCCESS"


def _infer_dtype_from_object(dtype):
    """pandas 2's `pandas.core.dtypes.common.infer_dtype_from_object` for dtype-likes: the scalar type."""
    from pandas.api.types import pandas_dtype

    return pandas_dtype(dtype).type


def evidently():
    """Import Evidently. Its newest release (0.7.23) imports `infer_dtype_from_object` from pandas' internals,
    which pandas 3 removed; only its legacy column-type test calls it, and medlora does not run that test.
    Putting pandas 2's function back lets the import succeed; the drift metrics themselves use pandas' public API."""
    import pandas.core.dtypes.common as dtypes_common

    if not hasattr(dtypes_common, "infer_dtype_from_object"):
        dtypes_common.infer_dtype_from_object = _infer_dtype_from_object
    import evidently as module

    return module


def _dataset(features: pd.DataFrame):
    from evidently import DataDefinition, Dataset

    definition = DataDefinition(numerical_columns=NUMERICAL, categorical_columns=CATEGORICAL)
    return Dataset.from_pandas(features[FEATURES], data_definition=definition)


def _check_columns(settings: DriftParams) -> None:
    for where, columns in (("per_column_method", settings.per_column_method),
                           ("per_column_threshold", settings.per_column_threshold)):
        unknown = sorted(set(columns) - set(FEATURES))
        if unknown:
            raise ValueError(f"drift.{where} in params.yaml names {unknown}, which are not drift features; "
                             f"the features are {FEATURES}")


def drift_snapshot(current: pd.DataFrame, reference: pd.DataFrame, settings: DriftParams):
    """Evidently's data drift report with its tests (current against reference)."""
    evidently()
    from evidently import Report
    from evidently.presets import DataDriftPreset

    _check_columns(settings)
    preset = DataDriftPreset(columns=FEATURES, drift_share=settings.drift_share, num_method=settings.num_method,
                             cat_method=settings.cat_method, threshold=settings.threshold,
                             per_column_method=settings.per_column_method or None,
                             per_column_threshold=settings.per_column_threshold or None)
    return Report([preset], include_tests=True).run(_dataset(current), _dataset(reference))


def summary_snapshot(current: pd.DataFrame):
    """With nothing to compare against, the report describes the incoming notes alone."""
    evidently()
    from evidently import Report
    from evidently.presets import DataSummaryPreset

    return Report([DataSummaryPreset(columns=FEATURES)]).run(_dataset(current), None)


def _status(test: dict) -> str:
    status = test["status"]
    return str(getattr(status, "value", status))


def read_snapshot(snapshot) -> tuple[list[ColumnDrift], float, bool]:
    """(each column's drift, the share of drifted columns, whether Evidently's drifted-share test failed)."""
    result = snapshot.dict()
    statuses = {test["metric_config"]["metric_id"]: _status(test) for test in result["tests"]}
    columns, share, dataset_drifted = [], None, None
    for metric in result["metrics"]:
        config = metric["config"]
        kind = config["type"].rsplit(":", 1)[-1]
        if kind == "ValueDrift":
            columns.append(ColumnDrift(column=config["column"], method=config["method"], score=float(metric["value"]),
                                       threshold=float(config["threshold"]),
                                       drifted=statuses.get(metric["id"], PASSED) != PASSED))
        elif kind == "DriftedColumnsCount":
            share = float(metric["value"]["share"])
            dataset_drifted = statuses.get(metric["id"]) != PASSED
    if share is None:
        raise RuntimeError("Evidently's drift report has no DriftedColumnsCount metric; has its DataDriftPreset changed?")
    order = {name: k for k, name in enumerate(FEATURES)}
    return sorted(columns, key=lambda c: order.get(c.column, len(order))), share, dataset_drifted


def compare(current: pd.DataFrame, baseline: pd.DataFrame | None, ref: Reference | None, settings: DriftParams,
            data_version: str, why_no_reference: str = "") -> tuple[DriftSummary, object]:
    """The summary and Evidently's snapshot (for its HTML) of the incoming notes' features against `baseline`, the
    features of `ref`'s training notes (None when there is none: `why_no_reference` says why)."""
    if baseline is None or ref is None:
        reason = f"{why_no_reference or 'no reference'}: nothing to compare the incoming notes with, so drift blocks nothing"
        return (DriftSummary(NO_REFERENCE, False, reason, data_version, len(current), reference=ref),
                summary_snapshot(current))
    snapshot = drift_snapshot(current, baseline, settings)
    columns, share, drifted = read_snapshot(snapshot)
    against = f"the training notes of {ref.model} v{ref.version} (data {ref.data_version[:12]}, {len(baseline)} notes)"
    count = sum(c.drifted for c in columns)
    if drifted:
        listed = ", ".join(f"{c.column} ({c.method} {c.score:.3g}, threshold {c.threshold:g})" for c in columns if c.drifted)
        reason = (f"{count} of {len(columns)} columns drifted ({share:.0%}; {settings.drift_share:.0%} or more is drift) "
                  f"against {against}: {listed}")
        if not settings.block_promotion:
            reason += " (not blocking: drift.block_promotion is false)"
    else:
        reason = f"{count} of {len(columns)} columns drifted ({share:.0%}; below {settings.drift_share:.0%}) against {against}"
    summary = DriftSummary(DRIFTED if drifted else NOT_DRIFTED, bool(drifted and settings.block_promotion), reason,
                           data_version, len(current), reference=ref, drift_share=share,
                           drift_share_threshold=settings.drift_share, columns=columns)
    return summary, snapshot


def save_html(snapshot, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(path))
    return path
