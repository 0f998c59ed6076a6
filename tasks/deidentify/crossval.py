"""`medlora deid cv`: the whole training procedure measured by cross-validation grouped by patient.

Each outer fold trains the CRF, the stacker and the threshold (with their own inner folds) on the other
folds' patients only, then de-identifies the fold's notes with the real detector. Scores are pooled over
the folds, per corpus (presidio-evaluator sentences on HIPAA types, grouped by template) and per PHI type.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import numpy as np
from sklearn.model_selection import GroupKFold
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from tasks.deidentify.engine import PhiDetector, PhiSpan
from tasks.deidentify.evaluate import TokenScores, score_note, scored_types
from tasks.deidentify.training import TrainingSet, fit_model, gather, rules_only, source_name
from tasks.params import DeidentifyParams

_DATA: TrainingSet | None = None  # shared with forked fold workers without pickling


def _run_fold(job: tuple[int, list[int], list[int], DeidentifyParams]) -> tuple[int, dict, list[tuple[int, list[PhiSpan]]]]:
    fold, train, test, params = job
    # One thread per fold worker: two workers' OpenMP teams (the stacker's trees) on two cores slowed each tenfold.
    with threadpool_limits(1):
        model, report = fit_model(_DATA, train, params.model, params.propagate_score, progress=False)
    detector = PhiDetector(params, model=model)
    texts = [_DATA.sequences[i].note.text for i in test]
    return fold, report, list(zip(test, detector.detect(texts, progress=False)))


def cross_validate(params: DeidentifyParams, root: Path, folds: int = 5, workers: int = 1, progress: bool = True) -> dict:
    global _DATA
    started = time.perf_counter()
    _DATA = data = gather(params.model, root, rules_only(params), progress)
    groups = np.array(data.groups)
    jobs = []
    for fold, (train, test) in enumerate(GroupKFold(n_splits=folds).split(data.sequences, groups=groups)):
        jobs.append((fold, [int(i) for i in train], data.originals(int(i) for i in test), params))
    if workers > 1 and "fork" in multiprocessing.get_all_start_methods():
        with multiprocessing.get_context("fork").Pool(min(workers, folds)) as pool:
            results = list(tqdm(pool.imap_unordered(_run_fold, jobs), total=folds, desc="outer folds", disable=not progress))
    else:
        results = [_run_fold(job) for job in tqdm(jobs, desc="outer folds", disable=not progress)]

    types = {source_name(s): scored_types(s.format, s.path) for s in params.model.sources}
    scores: dict[str, TokenScores] = {}
    for _, _, detected in results:
        for i, spans in detected:
            note, source = data.sequences[i].note, data.sources[i]
            score_note(note.text, note.spans, spans, scores.setdefault(source, TokenScores()), types[source])
    fold_reports = sorted(((fold, report) for fold, report, _ in results), key=lambda item: item[0])
    return {
        "folds": folds,
        "grouped_by": "patient (PhysioNet, synthetic notes), template (presidio-evaluator)",
        "corpora": {source: {"types": "HIPAA types" if types[source] else "all types", **s.summary()}
                    for source, s in scores.items()},
        "thresholds": [report["threshold"] for _, report in fold_reports],
        "fold_reports": [report for _, report in fold_reports],
        "seconds": round(time.perf_counter() - started, 1),
    }


def write_report(report: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
