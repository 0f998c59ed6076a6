"""The project's review store: the database that params.yaml names, a relative SQLite path meaning the project root."""

from __future__ import annotations

from pathlib import Path

from tasks.params import Params
from tasks.review.store import ReviewStore


def store_url(params: Params, root: Path) -> str:
    url = params.review.database
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        return f"sqlite:///{(root / url.removeprefix('sqlite:///')).resolve()}"
    return url


def open_store(params: Params, root: Path) -> ReviewStore:
    return ReviewStore(store_url(params, root), error_categories=tuple(params.review.error_categories))
