"""The per-user cache of things that are slow to build and the same for every project on a machine (the clinical
lexicon, SmolLM2's tokenizer read from its GGUF): `$MEDLORA_CACHE_DIR`, else `$XDG_CACHE_HOME/medlora`, else
`~/.cache/medlora`. Entries are named by a key of what made them, so a new version makes a new entry."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("MEDLORA_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "medlora")


def cache_key(*parts: bytes | str) -> str:
    return hashlib.sha1(b"\0".join(p.encode() if isinstance(p, str) else p for p in parts)).hexdigest()[:16]


def publish(partial: Path, final: Path) -> None:
    """Move a fully written file or directory into place by a rename: a process reading at the same time sees the
    old entry or the new one, never half of one. A lost race leaves the other process's entry."""
    try:
        partial.replace(final)
    except OSError:
        shutil.rmtree(partial, ignore_errors=True) if partial.is_dir() else partial.unlink(missing_ok=True)
