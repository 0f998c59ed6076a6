"""How well `critical_errors` and its negation detector do on real notes (MTSamples), not our generator's.

    .venv/bin/python bench/critical_errors.py [--csv ../shared/data/mtsamples/mtsamples.csv] [--notes 500]

Figures, each over the first N notes with a transcription:
- negation recall: of the findings written right after an unambiguous cue ("denies X", "no X",
  "negative for X", "without X": the cue and the mention with nothing between), the share the
  detector marks negated. The cue list is negspacy's; the reference pattern is ours and strict.
- false alarms: the share of faithful summaries (up to three sentences with a mention, copied from
  the note) with any critical error; and the same for MTSamples' own `description` line, which is
  a short abstract of the note, not an extract (its errors are partly real: it may name what the
  note does not).
- detection: the share of corrupted summaries flagged with the right kind of error: a negated
  sentence of the note with its cue removed (`adversarial.negation_flip`) -> negation_flip; a
  faithful extract plus a diagnosis or drug taken from another note -> unsupported_*.
"""

from __future__ import annotations

import argparse
import csv
import random
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.evaluate.adversarial import perturb  # noqa: E402
from tasks.evaluate.clinical_terms import clinical_mentions, critical_errors, negation_cues  # noqa: E402

DEFAULT_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "mtsamples" / "mtsamples.csv"
STRICT_CUES = re.compile(r"\b(?:denies|denied|no|negative for|without)\s+$", re.IGNORECASE)
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])|\n+|(?<=:)\s+(?=[A-Z])")


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text) if len(s.strip()) > 10]


def load_notes(path: Path, count: int) -> list[dict]:
    with open(path, newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["transcription"].strip()]
    return rows[:count]


def measure(notes: list[dict], seed: int = 0) -> dict:
    rng = random.Random(seed)
    negated_total = negated_found = 0
    faithful = faithful_alarms = described = description_alarms = 0
    flips = flips_found = swaps = swaps_found = 0
    pool = [(m.term, m.kind) for n in notes for m in clinical_mentions(n["transcription"])
            if m.kind in ("diagnosis", "drug") and not m.negated]
    started = time.perf_counter()
    for note in notes:
        text = note["transcription"]
        mentions = clinical_mentions(text)
        for m in mentions:
            if STRICT_CUES.search(text[max(0, m.start - 20) : m.start]):
                negated_total += 1
                negated_found += m.negated
        with_mentions = [s for s in sentences(text) if clinical_mentions(s)]
        if with_mentions:
            summary = " ".join(with_mentions[:3])
            faithful += 1
            faithful_alarms += bool(critical_errors(text, summary))
            # A diagnosis or drug from another note, not supported by this one.
            for term, kind in rng.sample(pool, min(len(pool), 20)):
                planted = f"{summary} Also {term}."
                if any(e.kind.startswith("unsupported") for e in critical_errors(text, f"Also {term}.")):
                    swaps += 1
                    swaps_found += any(e.kind == f"unsupported_{kind}" and e.term == term
                                       for e in critical_errors(text, planted))
                    break
        if note.get("description", "").strip():
            described += 1
            description_alarms += bool(critical_errors(text, note["description"]))
        negated_sentences = [s for s in sentences(text) if any(m.negated for m in clinical_mentions(s)) and negation_cues(s)]
        if negated_sentences:
            sentence = rng.choice(negated_sentences)
            flipped = perturb(sentence, "negation_flip", seed)
            if flipped != sentence:
                flips += 1
                flips_found += any(e.kind == "negation_flip" for e in critical_errors(text, flipped))
    seconds = time.perf_counter() - started
    share = lambda a, b: round(a / b, 4) if b else float("nan")  # noqa: E731
    return {
        "notes": len(notes),
        "negation_recall": share(negated_found, negated_total), "negated_findings": negated_total,
        "faithful_false_alarm_rate": share(faithful_alarms, faithful), "faithful_summaries": faithful,
        "description_error_rate": share(description_alarms, described), "descriptions": described,
        "negation_removed_detected": share(flips_found, flips), "negation_removed": flips,
        "swapped_term_detected": share(swaps_found, swaps), "swapped_terms": swaps,
        "seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    parser.add_argument("--notes", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not args.csv.exists():
        sys.exit(f"{args.csv} not found: pass --csv with the MTSamples mtsamples.csv")
    clinical_mentions("build the vocabulary")  # a few seconds, once, kept out of the timing
    for name, value in measure(load_notes(args.csv, args.notes), args.seed).items():
        print(f"{name:28} {value}")


if __name__ == "__main__":
    main()
