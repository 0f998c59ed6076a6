"""What drift is measured on: a few numbers derived from each de-identified note, never its text.

Each note becomes one row: its specialty (categorical), its length in characters and in words, and two
vocabulary measures read against a fixed English word list (`wordfreq`, the same list the evaluation's
clinical lexicon uses), so that the reference and the incoming notes are measured by the same ruler:
the share of its lower-case words that the list does not know at all (new jargon, another language,
garbled text), and the share of rare ones (technical vocabulary density)."""

from __future__ import annotations

import re
from functools import lru_cache

import pandas as pd
from wordfreq import zipf_frequency

WORD = re.compile(r"[^\W\d_]+")  # runs of letters: numbers and punctuation are no vocabulary
# zipf is log10 of uses per billion words: "the" 7.7, "fever" 4.2, "echocardiogram" 2.0, "lisinopril" 1.7
RARE_WORD_ZIPF = 3.0
CATEGORICAL = ["specialty"]
NUMERICAL = ["chars", "words", "unknown_word_share", "rare_word_share"]
FEATURES = CATEGORICAL + NUMERICAL


@lru_cache(maxsize=200_000)
def word_zipf(word: str) -> float:
    return zipf_frequency(word, "en")


def note_features(text: str) -> dict[str, float]:
    words = WORD.findall(text)
    # Vocabulary is read on lower-case words only: capitalised ones are mostly names and places, which after
    # de-identification are surrogates drawn at random; measured with them, two batches of the same generator's
    # notes "drifted" (K-S p < 0.001) on their patients' surrogate names alone.
    zipfs = [word_zipf(w) for w in words if w.islower()]
    count = len(zipfs) or 1  # a note without such words has no vocabulary shares (0, not NaN)
    return {"chars": float(len(text)), "words": float(len(words)),
            "unknown_word_share": sum(z == 0 for z in zipfs) / count,
            "rare_word_share": sum(0 < z < RARE_WORD_ZIPF for z in zipfs) / count}


def feature_table(notes: pd.DataFrame) -> pd.DataFrame:
    """One row per note with the FEATURES columns only (the text is read here and dropped)."""
    missing = {"text", "specialty"} - set(notes.columns)
    if missing:
        raise ValueError(f"the notes have no column {sorted(missing)}; drift reads validated notes "
                         f"(data/validated/*.parquet), which have them")
    rows = [note_features(text) for text in notes["text"].astype(str)]
    table = pd.DataFrame(rows, columns=NUMERICAL, index=notes.index)
    table.insert(0, "specialty", notes["specialty"].astype(str))
    return table.reset_index(drop=True)
