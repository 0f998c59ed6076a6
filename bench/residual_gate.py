"""The residual-PHI gate's date check after our de-identification: how many notes it flags, and whether what it
flags is a date our detector missed (it overlaps a gold PHI span) or a false alarm.

    .venv/bin/python bench/residual_gate.py [--corpus physionet mtsamples presidio] [--limit N] [--show]

Each corpus is de-identified by `deidentify_notes` with the project's params (`params.yaml`, the PHI token model
at its configured path), then every note goes through the gate's date check with the dates de-identification
issued for it. A flagged string is mapped back to the original note (difflib alignment of original and
de-identified text) to test it against the gold spans. MTSamples has no gold: every date flagged there is a date
our detector missed or a false alarm; `--show` prints each with a little context to tell them apart.
"""

from __future__ import annotations

import argparse
import difflib
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARED = ROOT.parent / "shared" / "data"
CORPORA = {"physionet": SHARED / "physionet-deid", "mtsamples": SHARED / "mtsamples" / "mtsamples.csv",
           "presidio": SHARED / "presidio-synth" / "synth_dataset_v2.json"}
KEY = b"bench-residual-gate"


@dataclass
class GateFigures:
    notes: int = 0
    flagged_notes: int = 0
    leaks: int = 0           # flagged strings overlapping a gold PHI span
    false_alarms: int = 0    # flagged strings overlapping none (on a corpus without gold: unknown, counted here)
    false_alarm_notes: int = 0
    shown: list[str] = field(default_factory=list)


def read_notes(corpus: str, limit: int | None, seed: int):
    """GoldNotes of a corpus; MTSamples transcriptions as notes without gold, a seeded sample of `limit`."""
    from tasks.deidentify.corpora import GoldNote, read_corpus

    if corpus != "mtsamples":
        notes = read_corpus(CORPORA[corpus])
    else:
        raw = pd.read_csv(CORPORA[corpus]).dropna(subset=["transcription"])
        notes = [GoldNote(note_id=str(i), text=t) for i, t in zip(raw["note_id"], raw["transcription"])]
    if limit is not None and limit < len(notes):
        notes = random.Random(seed).sample(notes, limit)
    return notes


def deidentify(notes) -> pd.DataFrame:
    from tasks.deidentify.engine import deidentify_notes
    from tasks.params import load_params

    frame = pd.DataFrame({"note_id": [n.note_id for n in notes], "patient_id": [n.patient_id or n.note_id for n in notes],
                          "text": [n.text for n in notes], "target": "", "specialty": "any", "expert": "any",
                          "source_row": range(1, len(notes) + 1)})
    out, _ = deidentify_notes(frame, load_params(ROOT).deidentify, KEY, root=ROOT)
    return out


def original_offsets(blocks: list, start: int, end: int) -> list[tuple[int, int]]:
    """The stretches of the original that deidentified[start:end] was left unchanged from, given the matching
    blocks (original offset, de-identified offset, size) of the two texts."""
    return [(i + max(start, j) - j, i + min(end, j + size) - j) for i, j, size in blocks if j < end and start < j + size]


def measure(notes, deidentified, show: bool) -> GateFigures:
    from tasks.validate.residual_phi import unissued_dates

    figures = GateFigures(notes=len(notes))
    for note, text, issued in zip(notes, deidentified["text"], deidentified["surrogate_dates"]):
        flagged = unissued_dates(text, issued)
        figures.flagged_notes += bool(flagged)
        alarms = 0
        blocks = difflib.SequenceMatcher(None, note.text, text, autojunk=False).get_matching_blocks() if flagged else []
        for start, end in flagged:
            leak = any(s.start < b and a < s.end for a, b in original_offsets(blocks, start, end) for s in note.spans)
            figures.leaks += leak
            alarms += not leak
            if show:
                context = text[max(0, start - 30) : end + 30].replace("\n", " ")
                figures.shown.append(f"  {'leak ' if leak else 'alarm'} {text[start:end]!r:24} ...{context}...")
        figures.false_alarms += alarms
        figures.false_alarm_notes += alarms > 0
    return figures


def report(corpus: str, figures: GateFigures, has_gold: bool) -> None:
    unknown = "" if has_gold else " (no gold: missed dates and false alarms together)"
    print(f"{corpus:10s} notes {figures.notes:5d}  flagged {figures.flagged_notes:4d} "
          f"({figures.flagged_notes / figures.notes:.1%})  gold PHI {figures.leaks if has_gold else '-':>4}  "
          f"no gold PHI {figures.false_alarms:4d}  false-alarm notes {figures.false_alarm_notes:4d} "
          f"({figures.false_alarm_notes / figures.notes:.1%}, {figures.false_alarms / figures.notes:.3f} per note){unknown}")
    for line in figures.shown:
        print(line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", nargs="+", choices=sorted(CORPORA), default=["physionet", "mtsamples", "presidio"])
    parser.add_argument("--limit", type=int, default=300, help="MTSamples notes, a seeded sample (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show", action="store_true", help="print every flagged string with its context")
    args = parser.parse_args()
    from tasks.params import load_params

    model = ROOT / load_params(ROOT).deidentify.model.path
    if not model.exists():
        print(f"{model}: the PHI token model is missing; train it with `.venv/bin/medlora deid train`", file=sys.stderr)
        return 2
    for corpus in args.corpus:
        if not CORPORA[corpus].exists():
            print(f"{CORPORA[corpus]}: not found, {corpus} skipped", file=sys.stderr)
            continue
        notes = read_notes(corpus, args.limit or None if corpus == "mtsamples" else None, args.seed)
        report(corpus, measure(notes, deidentify(notes), args.show), has_gold=corpus != "mtsamples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
