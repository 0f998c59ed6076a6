"""Which (request, target) pairs each expert learns from, per split.

- a specialty expert: the validated notes of its group, and the synthetic examples the augment stage added for it;
- the multi-task expert: the real validated notes of every group together;
- a task expert: its own corpus (PubMedQA), split by item id (see tasks/finetune/pubmedqa.py).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tasks.finetune.examples import Request
from tasks.finetune.pubmedqa import read_pubmedqa, split_pubmedqa
from tasks.params import MULTITASK_EXPERT, Params

Pairs = list[tuple[Request, str]]


REAL_ORIGIN = "real"  # the augment stage's provenance: real notes, or synthetic examples for rare experts


def is_real(frame: pd.DataFrame) -> pd.Series:
    return frame["origin"] == REAL_ORIGIN if "origin" in frame else pd.Series(True, index=frame.index)


def real_only(splits: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    return {split: frame[is_real(frame)] for split, frame in splits.items()}


def synthetic_rows(train: pd.DataFrame, params: Params, expert: str) -> pd.DataFrame:
    """The synthetic training examples of a specialty expert (none for the multi-task and task experts)."""
    return train[~is_real(train) & (train["expert"] == expert)] if expert in params.experts else train.iloc[:0]


def provenance_summary(synthetic: pd.DataFrame, keep: str) -> dict[str, str | int]:
    """What an adapter's training data held beyond real notes, for its report and registered version (with
    augment.keep auto, the training that chose adds whether augmentation was kept)."""
    if not len(synthetic):
        return {"synthetic_examples": 0, "augmentation": "none"}
    decision = {"never": "not used (augment.keep: never)", "always": "used (augment.keep: always)", "auto": ""}[keep]
    count = lambda column: ", ".join(f"{k}: {v}" for k, v in synthetic[column].value_counts().sort_index().items())  # noqa: E731
    return {"synthetic_examples": len(synthetic), "augmentation": decision, "synthetic_methods": count("method"),
            "synthetic_generators": ", ".join(sorted({f"{g} ({v})" if v else g for g, v in
                                                      zip(synthetic["generator"], synthetic["generator_version"])}))}


def note_pairs(frame: pd.DataFrame) -> Pairs:
    return [(Request(text=text), target) for text, target in zip(frame["text"], frame["target"])]


def expert_records(params: Params, expert: str, splits: dict[str, pd.DataFrame], root: Path) -> dict[str, Pairs]:
    """{split: pairs} for the splits given (of data/validated for note experts)."""
    task = params.finetune.task_experts.get(expert)
    if task is not None:
        parts = split_pubmedqa(read_pubmedqa(root / task.path), params.seed, task.holdout, task.val)
        return {split: [(item.request, item.target) for item in parts[split]] for split in splits}
    groups = list(params.experts) if expert == MULTITASK_EXPERT else [expert]
    if expert not in params.experts and expert != MULTITASK_EXPERT:
        raise ValueError(f"unknown expert {expert!r}: not in experts, task_experts or {MULTITASK_EXPERT!r}")
    if expert == MULTITASK_EXPERT:  # synthetic examples feed their own expert only
        splits = real_only(splits)
    return {split: note_pairs(frame[frame["expert"].isin(groups)]) for split, frame in splits.items()}
