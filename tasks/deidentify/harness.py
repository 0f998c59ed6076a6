"""`medlora deid detect` and `medlora deid evaluate`: PHI spans for a file of notes, and their scores."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

from tqdm import tqdm

from tasks.deidentify.corpora import GoldNote, GoldSpan, read_corpus
from tasks.deidentify.engine import PhiDetector, PhiSpan
from tasks.deidentify.evaluate import score_corpus, scored_types
from tasks.params import DeidentifyParams

_WORKER: PhiDetector | None = None


def _start_worker(params: DeidentifyParams, root: Path) -> None:
    global _WORKER
    _WORKER = PhiDetector(params, root=root)


def _detect_batch(texts: list[str]) -> list[list[PhiSpan]]:
    return _WORKER.detect(texts, progress=False)


def worker_batches(texts: list[str], batch_size: int, workers: int) -> list[list[str]]:
    """Batches of at most `batch_size`, and at least 8 per worker, so that no worker idles long at the end."""
    size = max(1, min(batch_size, -(-len(texts) // (8 * workers))))
    return [texts[i : i + size] for i in range(0, len(texts), size)]


def detect_texts(texts: list[str], params: DeidentifyParams, root: Path, workers: int | None = None,
                 progress: bool = True, detector: PhiDetector | None = None) -> list[list[PhiSpan]]:
    """PHI spans of every text, in `workers` processes.

    Where the OS can fork, workers inherit the loaded detector and start at once; elsewhere each
    spawned worker loads spaCy and the model itself.
    """
    global _WORKER
    workers = workers or params.workers
    if workers <= 1 or len(texts) < 2 * params.batch_size:
        return (detector or PhiDetector(params, root=root)).detect(texts, progress=progress)
    batches = worker_batches(texts, params.batch_size, workers)
    if "fork" in multiprocessing.get_all_start_methods():
        _WORKER = detector or PhiDetector(params, root=root)
        pool = multiprocessing.get_context("fork").Pool(workers)
    else:
        pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_start_worker, initargs=(params, root))
    found: list[list[PhiSpan]] = []
    with pool, tqdm(total=len(texts), desc="detecting PHI", unit="note", disable=not progress) as bar:
        for spans in pool.imap(_detect_batch, batches):
            found.extend(spans)
            bar.update(len(spans))
    return found


def write_spans(path: Path, notes: list[GoldNote], detected: list[list[PhiSpan]]) -> None:
    """One line per note: note_id and its spans (offsets and types only, never the text)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        for note, spans in zip(notes, detected):
            handle.write(json.dumps({"note_id": note.note_id, "spans": [
                {"start": s.start, "end": s.end, "entity_type": s.entity_type, "score": round(s.score, 4)} for s in spans
            ]}) + "\n")


def read_spans(path: Path, notes: list[GoldNote]) -> list[list[GoldSpan]]:
    by_note = {}
    with path.open() as handle:
        for line_number, line in enumerate(handle, 1):
            if line.strip():
                record = json.loads(line)
                if "note_id" not in record or "spans" not in record:
                    raise ValueError(f"{path} line {line_number}: expected fields 'note_id' and 'spans'")
                by_note[str(record["note_id"])] = [GoldSpan(s["start"], s["end"], s.get("entity_type", "PHI")) for s in record["spans"]]
    missing = [n.note_id for n in notes if n.note_id not in by_note]
    if missing:
        raise ValueError(f"{path}: no spans for {len(missing)} notes of the corpus (first: note_id {missing[0]})")
    return [by_note[n.note_id] for n in notes]


def trained_on(corpus_path: Path, params: DeidentifyParams, root: Path) -> bool:
    """Whether the configured model trains on this corpus (then its scores there are optimistic)."""
    return any(s.path and (root / s.path).resolve() == corpus_path.resolve() for s in params.model.sources)


def evaluate_corpus(corpus_path: Path, corpus_format: str, params: DeidentifyParams, root: Path,
                    spans_path: Path | None = None, types: str = "auto", workers: int | None = None, progress: bool = True,
                    threshold: float | None = None) -> dict:
    notes = read_corpus(corpus_path, corpus_format)
    if spans_path is not None:
        detected = read_spans(spans_path, notes)
    else:
        detector = PhiDetector(params, root=root)
        if detector.model is not None:
            if threshold is not None:
                detector.model.threshold = threshold
            threshold = detector.model.threshold
        detected = detect_texts([n.text for n in notes], params, root, workers, progress, detector)
    kept_types = scored_types(corpus_format, corpus_path, types)
    summary = score_corpus(notes, detected, kept_types).summary()
    return {"corpus": str(corpus_path), "trained_on": trained_on(corpus_path, params, root), "notes": len(notes), "threshold": threshold,
            "types": "HIPAA types" if kept_types else "all types", **summary}
