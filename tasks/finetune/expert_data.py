"""Which (request, target) pairs each expert learns from, per split.

- a specialty expert: the validated notes of its group;
- the multi-task expert: the validated notes of every group together;
- a task expert: its own corpus (PubMedQA), split by item id (see tasks/finetune/pubmedqa.py).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tasks.finetune.examples import Request
from tasks.finetune.pubmedqa import read_pubmedqa, split_pubmedqa
from tasks.params import MULTITASK_EXPERT, Params

Pairs = list[tuple[Request, str]]


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
    return {split: note_pairs(frame[frame["expert"].isin(groups)]) for split, frame in splits.items()}
