"""Where the stages write in a project, and read what the stage before them wrote. Kept apart from the stage flows
so that a stage can name another's directory without importing its code (flows/validate.py loads Great
Expectations, flows/deidentify.py Presidio and spaCy)."""

from pathlib import Path

INGESTED_DIR = Path("data/raw/ingested")
GX_DIR = Path("gx")
DEID_DIR = Path("data/deid")
VALIDATED_DIR = Path("data/validated")
QUARANTINE_DIR = Path("data/quarantine")
AUGMENTED_DIR = Path("data/augmented")  # the augment stage's training set: train.parquet
ADAPTERS_DIR = Path("models/adapters")
