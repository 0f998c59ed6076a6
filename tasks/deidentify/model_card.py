"""The PHI token model's card: what it was trained on, how, and how well it does on patients it never saw."""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

from tasks.params import DeidModelParams

CARD_FILE = "MODEL_CARD.md"
CV_REPORT_FILE = "cv_report.json"  # written by `medlora deid cv` beside the model


def _cv_section(cv: dict | None) -> list[str]:
    if cv is None:
        return ["No cross-validation report beside the model: run `medlora deid cv` (it writes "
                f"{CV_REPORT_FILE} here) and then `medlora deid train` again to include it."]
    lines = [f"`medlora deid cv --folds {cv['folds']}`: each fold's model (CRF, stacker and threshold, with their own "
             f"inner folds) trained without that fold's groups ({cv['grouped_by']}); scores pooled out of fold, "
             "binary token level.", "",
             "| corpus | types | recall | precision | F2 | PHI tokens | false positives |", "|---|---|---|---|---|---|---|"]
    for corpus, s in cv["corpora"].items():
        lines.append(f"| {corpus} | {s['types']} | {s['recall']} | {s['precision']} | {s['f2']} | {s['phi_tokens']} | "
                     f"{s['false_positives']} |")
    lines += ["", "Recall per gold type:", ""]
    for corpus, s in cv["corpora"].items():
        by_type = ", ".join(f"{t} {r} ({s['tokens_by_type'][t]})" for t, r in s["recall_by_type"].items())
        lines.append(f"- {corpus}: {by_type}")
    lines += ["", f"Thresholds chosen per fold: {cv['thresholds']}."]
    return lines


def write_model_card(model_path: Path, report: dict, params: DeidModelParams) -> Path:
    cv_path = model_path.parent / CV_REPORT_FILE
    cv = json.loads(cv_path.read_text()) if cv_path.exists() else None
    corpora = [f"| {name} | {c['notes']} | {c['resynthesized_copies']} |" for name, c in report["sources"].items()]
    lines = [
        "# PHI token model", "",
        f"Trained {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC with `medlora deid train` (medlora's own code, "
        f"python-crfsuite {version('python-crfsuite')}, scikit-learn {version('scikit-learn')}, Python "
        f"{platform.python_version()}). Rebuild it with the same command; `--add notes.jsonl` adds your own annotated "
        "notes (a model trained on them holds words of those notes: keep it where PHI may live).", "",
        "## What it is",
        "A linear-chain CRF over sparse token features (word, shape, name and place lists, clinical vocabulary, "
        "English word frequency, rule and Presidio recognizer hits), read through a gradient-boosted stacker over the "
        "CRF's out-of-fold marginals, with a decision threshold on P(PHI) set out of fold for the target recall.", "",
        "## Training data",
        "| corpus | notes | re-synthesized copies |", "|---|---|---|", *corpora, "",
        f"Tokens: {report['train_tokens']:,} ({report['train_phi_tokens']:,} PHI). Clinical vocabulary: "
        f"{report['vocabulary_words']:,} words seen at least 3 times in {', '.join(params.vocabulary) or 'nothing'}.", "",
        "## Choices, all made out of fold on the training corpora",
        f"- Threshold: {report['threshold']} (the highest at which the finished detection reaches recall "
        f"{params.target_recall} out of fold on the calibrating corpora; there it had recall {report['inner_cv_recall']} "
        f"and precision {report['inner_cv_precision']}, {params.threshold_folds} folds grouped by patient).",
        f"- CRF regularisation L1 {params.l1}, L2 {params.l2}, {params.iterations} iterations; re-synthesis case flips "
        f"{params.resynthesis_case_flip}.", "",
        "## Cross-validated figures (notes of patients the model never saw)", *_cv_section(cv), "",
    ]
    path = model_path.parent / CARD_FILE
    path.write_text("\n".join(lines))
    return path
