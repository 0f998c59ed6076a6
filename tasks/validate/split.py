"""Train/val/test split grouped by patient, so that no patient's notes cross splits."""

from __future__ import annotations

import random

import pandas as pd

from tasks.params import SplitFractions


def split_by_patient(notes: pd.DataFrame, fractions: SplitFractions, seed: int) -> dict[str, pd.DataFrame]:
    """Within each expert, whole patients go to one split until its share of notes is reached.

    A patient seen by several experts is placed once, by the first expert that meets them, so the
    grouping holds across experts too.
    """
    rng = random.Random(seed)
    placed: dict[str, str] = {}
    for expert in sorted(notes["expert"].unique()):
        group = notes[notes["expert"] == expert]
        sizes = group.groupby("patient_id").size()
        patients = sorted(sizes.index)
        rng.shuffle(patients)
        total = len(group)
        filled = {name: int(group["patient_id"].map(placed).eq(name).sum()) for name in ("train", "val", "test")}
        targets = {"val": fractions.val * total, "test": fractions.test * total}
        for patient in patients:
            if patient in placed:
                continue
            # Train first gets one patient, so that no expert is left without training notes; then
            # test and val fill up to their share (at least one note each when there are enough
            # notes), and everything else trains.
            if filled["train"] == 0:
                name = "train"
            else:
                name = next((s for s in ("test", "val") if filled[s] < max(targets[s], 1 if total >= 3 else 0)), "train")
            placed[patient] = name
            filled[name] += int(sizes[patient])
    assignment = notes["patient_id"].map(placed)
    return {name: notes[assignment == name].reset_index(drop=True) for name in ("train", "val", "test")}


def patients_crossing_splits(splits: dict[str, pd.DataFrame]) -> set[str]:
    seen: dict[str, str] = {}
    crossing = set()
    for name, frame in splits.items():
        for patient in frame["patient_id"].unique():
            if seen.setdefault(patient, name) != name:
                crossing.add(patient)
    return crossing
