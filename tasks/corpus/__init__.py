"""The synthetic sample corpus: clinical notes with PHI, gold PHI spans and one-sentence targets."""
