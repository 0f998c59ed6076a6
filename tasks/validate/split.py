"""Train/val/test split grouped by patient and by duplicate cluster.

A leakage group is a connected set of notes that share a patient or a duplicate cluster: two
notes of one patient, or the same transcription filed under two specialties, always land in the
same split, because the split assigns whole groups.
"""

from __future__ import annotations

import random

import pandas as pd

from tasks.params import SplitFractions
from tasks.validate.duplicates import UnionFind

SPLITS = ("train", "val", "test")
GROUPED_BY = ("patient_id", "duplicate_cluster")


def leakage_groups(notes: pd.DataFrame) -> pd.Series:
    """A group number per note: notes linked by a shared patient or duplicate cluster, transitively."""
    groups = UnionFind(len(notes))
    for column in GROUPED_BY:
        first: dict[object, int] = {}
        for position, value in enumerate(notes[column]):
            groups.union(position, first.setdefault(value, position))
    return pd.Series([groups.find(i) for i in range(len(notes))], index=notes.index)


def split_grouped(notes: pd.DataFrame, fractions: SplitFractions, seed: int) -> dict[str, pd.DataFrame]:
    """Within each expert, whole leakage groups go to one split until its share of notes is reached.

    A group that spans experts is placed once, by the first expert that meets it.
    """
    rng = random.Random(seed)
    group_of = leakage_groups(notes)
    placed: dict[int, str] = {}
    for expert in sorted(notes["expert"].unique()):
        in_expert = notes["expert"] == expert
        sizes = group_of[in_expert].value_counts()
        groups = sorted(sizes.index)
        rng.shuffle(groups)
        total = int(in_expert.sum())
        filled = {name: int(group_of[in_expert].map(placed).eq(name).sum()) for name in SPLITS}
        targets = {"val": fractions.val * total, "test": fractions.test * total}
        for group in groups:
            if group in placed:
                continue
            # Train first gets one group, so that no expert is left without training notes; then test and
            # val fill up to their share (at least one note each when there are enough notes); the rest trains.
            if filled["train"] == 0:
                name = "train"
            else:
                name = next((s for s in ("test", "val") if filled[s] < max(targets[s], 1 if total >= 3 else 0)), "train")
            placed[group] = name
            filled[name] += int(sizes[group])
    assignment = group_of.map(placed)
    return {name: notes[assignment == name].reset_index(drop=True) for name in SPLITS}


def values_crossing_splits(splits: dict[str, pd.DataFrame], column: str) -> set:
    """Values of `column` (a patient, a duplicate cluster) found in more than one split."""
    seen: dict[object, str] = {}
    crossing = set()
    for name, frame in splits.items():
        for value in frame[column].unique():
            if seen.setdefault(value, name) != name:
                crossing.add(value)
    return crossing
