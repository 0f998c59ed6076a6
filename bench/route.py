"""Which routing wins? Routing accuracy of every strategy beside TF-IDF + logistic regression on the
same split, the downstream table of the five schemes, and gradient-free composition for specialties
that have no expert.

Run after `medlora run` in a project whose input is MTSamples (see docs/BENCHMARKS.md):

    .venv/bin/python bench/route.py --root PROJECT [--adapters DIR] [--compose "ENT - Otolaryngology" ...] [--json route.json]

- routing: accuracy on the held-out notes of the expert groups (test split of data/validated) for
  supervised, contrastive and reinforce routers, for the supervised router on each view alone, and
  for TF-IDF + logistic regression (scikit-learn defaults, and with C chosen on the validation split);
  beside each router, the held-out target loss under its mixes;
- downstream: target loss and ROUGE-L on the same notes for base, multi-task, router, oracle, uniform;
- composition: for each specialty given with --compose (read from input.path, which must be the
  MTSamples CSV: those notes are outside the expert groups, so the pipeline quarantined them), 5
  training notes chosen by a hash of their row, the rest held out; composed vs base vs uniform mix.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.layout import ADAPTERS_DIR, VALIDATED_DIR  # noqa: E402
from tasks.finetune.examples import Request  # noqa: E402
from tasks.params import load_params  # noqa: E402
from tasks.route.features import RequestFeatures  # noqa: E402
from tasks.route.stage import compose_experts, downstream_table, prepare, read_notes, routing_evaluation, train_router  # noqa: E402
from tasks.route.strategies import NO_LABEL, STRATEGIES  # noqa: E402


def tfidf_baselines(notes: dict[str, pd.DataFrame], groups: list[str]) -> dict[str, float]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    split = {s: frame[frame["expert"].isin(groups)] for s, frame in notes.items()}
    score = lambda model, s: round(float((model.predict(split[s]["text"]) == split[s]["expert"]).mean()), 4)  # noqa: E731
    default = make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=3000)).fit(split["train"]["text"], split["train"]["expert"])
    tuned = max((make_pipeline(TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=2),
                               LogisticRegression(C=c, max_iter=3000)).fit(split["train"]["text"], split["train"]["expert"])
                 for c in (1, 10, 30, 100)), key=lambda model: score(model, "val"))
    return {"TF-IDF + LR (defaults)": score(default, "test"),
            f"TF-IDF + LR (bigrams, C={tuned[-1].C} chosen on val)": score(tuned, "test")}


def add_composition_notes(setup, source: Path, specialties: list[str], shots: int) -> dict[str, list[str]]:
    """Notes of specialties outside the expert groups, from the raw MTSamples CSV: `shots` per
    specialty to train on (lowest hash of the row), the rest held out."""
    frame = pd.read_csv(source)
    groups = {}
    for specialty in specialties:
        rows = frame[(frame["medical_specialty"].str.strip() == specialty) & frame["transcription"].notna()
                     & frame["description"].notna()]
        if rows.empty:
            raise SystemExit(f"{source}: no notes with medical_specialty {specialty!r}")
        order = sorted(rows.index, key=lambda i: hashlib.sha256(str(i).encode()).hexdigest())
        name = specialty.split(" - ")[0].split(" / ")[0].lower().replace(" ", "_")
        for split, chosen in (("train", order[:shots]), ("test", order[shots:])):
            pairs = [(Request(text=rows.loc[i, "transcription"]), rows.loc[i, "description"].strip()) for i in chosen]
            setup.requests[split].add(pairs, name, NO_LABEL)
        groups[name] = [specialty]
    return groups


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--adapters", type=Path, help="directory of the expert adapters (default: ROOT/models/adapters)")
    parser.add_argument("--compose", nargs="*", default=[], help="MTSamples specialties with no expert to compose one for")
    parser.add_argument("--notes", type=int, default=0, help="held-out notes per downstream scheme (0: all)")
    parser.add_argument("--no-generation", action="store_true", help="downstream target loss only, no ROUGE-L")
    parser.add_argument("--no-downstream", action="store_true", help="routing accuracy only")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--feature-cache", type=Path, help="keep the routing features in this file between runs")
    args = parser.parse_args()
    root = args.root.resolve()
    params = load_params(root)
    console = Console(width=150)
    started = time.perf_counter()
    notes = read_notes(root, VALIDATED_DIR)
    setup = prepare(params, root, args.adapters or root / ADAPTERS_DIR, notes, feature_cache=args.feature_cache)
    console.print(f"features of {sum(len(p.requests) for p in setup.requests.values())} requests: {time.perf_counter() - started:.0f} s")

    results = {"experts": setup.experts, "routing": {}, "baselines": tfidf_baselines(notes, list(params.experts))}
    routers = {}
    vectoriser, features = setup.vectoriser, setup.features
    # (name, strategy, lexical view kept, hidden view kept)
    variants = [(name, name, True, True) for name in STRATEGIES] + [
        ("supervised, hidden state only", "supervised", False, True),
        ("supervised, TF-IDF bag only", "supervised", True, False)]
    for name, strategy, lexical, hidden in variants:
        setup.params = params.model_copy(update={"route": params.route.model_copy(update={"strategy": strategy})})
        setup.vectoriser = vectoriser if lexical else None
        setup.features = features if hidden else {s: RequestFeatures(torch.zeros_like(f.hidden), f.bags) for s, f in features.items()}
        began = time.perf_counter()
        router, log, _ = train_router(setup)
        seconds = round(time.perf_counter() - began, 1)
        evaluation = routing_evaluation(router, setup)
        results["routing"][name] = {"accuracy": evaluation["notes"]["accuracy"], "seconds": seconds,
                                    "utilisation": evaluation["notes"]["utilisation"], "confusion": evaluation["notes"]["confusion"],
                                    "question_accuracy": evaluation.get("questions", {}).get("accuracy")}
        if not args.no_downstream:
            rows = downstream_table(router, setup, limit=args.notes, generate_text=False, progress=False, systems=["router mixture"])
            results["routing"][name]["router_target_loss"] = rows[0]["target_loss"]
        routers[name] = router
    setup.vectoriser, setup.features = vectoriser, features
    setup.params = params

    table = Table(title=f"routing accuracy on {evaluation['notes']['requests']} held-out notes ({len(params.experts)} groups)")
    for column in ("router", "accuracy", "questions", "utilisation entropy (bits)", "held-out target loss", "train s"):
        table.add_column(column)
    for name, row in results["routing"].items():
        table.add_row(name, f"{row['accuracy']:.3f}", str(row["question_accuracy"]),
                      f"{row['utilisation']['entropy_bits']:.2f} / {row['utilisation']['max_entropy_bits']:.2f}",
                      str(row.get("router_target_loss", "")), str(row["seconds"]))
    for name, accuracy in results["baselines"].items():
        table.add_row(name, f"{accuracy:.3f}", "", "", "", "")
    console.print(table)

    if args.no_downstream:
        return finish(results, args, started)
    chosen = params.route.strategy
    results["downstream"] = downstream_table(routers[chosen], setup, limit=args.notes, generate_text=not args.no_generation)
    table = Table(title=f"downstream on held-out notes (router: {chosen}, top_k={params.route.top_k})")
    for column in ("scheme", "notes", "target loss", "vs oracle", "ROUGE-L"):
        table.add_column(column)
    oracle = next(r["target_loss"] for r in results["downstream"] if r["system"] == "oracle expert")
    for row in results["downstream"]:
        table.add_row(row["system"], str(row["notes"]), f"{row['target_loss']:.4f}", f"{row['target_loss'] / oracle - 1:+.2%}",
                      "" if "rouge_l" not in row else f"{row['rouge_l']:.3f}")
    console.print(table)

    if args.compose:
        groups = add_composition_notes(setup, root / params.input.path, args.compose, params.route.compose.examples)
        setup.params = params.model_copy(update={"route": params.route.model_copy(
            update={"compose": params.route.compose.model_copy(update={"specialties": groups})})})
        results["composed"] = compose_experts(setup, root / "bench-composed")
        for composed in results["composed"]:
            table = Table(title=f"composed expert {composed['expert']}: {composed['examples']} examples, "
                                f"{composed['held_out_notes']} held-out notes, {composed['evaluations']} loss evaluations")
            for column in ("scheme", "held-out target loss"):
                table.add_column(column)
            for row in composed["held_out"]:
                table.add_row(row["system"], f"{row['target_loss']:.4f}")
            console.print(table)
            console.print("weights: " + ", ".join(f"{e} {w:+.2f}" for e, w in zip(composed["experts"], composed["weights"])))
    return finish(results, args, started)


def finish(results: dict, args, started: float) -> int:
    results["seconds"] = round(time.perf_counter() - started, 1)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
