"""Evaluation figures on a project's held-out data: every metric, the safety signals' AUROC on PubMedQA
and robustness, for the base model and trained adapters, through the evaluate stage's own functions.

Usage: .venv/bin/python bench/evaluate.py --root PROJECT [--adapters DIR] [--systems base multitask pubmedqa]
       [--notes N] [--questions N] [--adversarial N] [--json out.json]

Adapters are read from a directory (not the registry) so that the figures can be taken on any trained
project; `base` is the base model alone."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
from peft import PeftModel

from tasks.evaluate.evaluation import flag_outputs, held_out_items, in_scope, robustness, safety_separation, score_items, summarise
from tasks.finetune.inference import AdapterEngine
from tasks.base_model import load_base
from tasks.params import load_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--adapters", type=Path, help="expert adapters (default: ROOT/models/adapters)")
    parser.add_argument("--systems", nargs="+", default=["base", "multitask", "pubmedqa"])
    parser.add_argument("--notes", type=int, default=0, help="held-out notes (0: all)")
    parser.add_argument("--questions", type=int, default=0, help="held-out PubMedQA items (0: all)")
    parser.add_argument("--adversarial", type=int, default=20, help="requests per perturbation")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    root = args.root.resolve()
    adapters = args.adapters or root / "models" / "adapters"
    params = load_params(root, {"evaluate": {"notes": args.notes, "questions": args.questions,
                                             "adversarial_requests": args.adversarial}})
    items = held_out_items(params, root, pd.read_parquet(root / "data" / "validated" / "test.parquet"))
    print(f"{sum(not i.is_question for i in items)} held-out notes, {sum(i.is_question for i in items)} questions")
    results = {}
    for system in args.systems:
        tokenizer, model = load_base(params.base_model, root)
        scope = "all" if system == "base" else system
        if system != "base":
            model = PeftModel.from_pretrained(model, adapters / system).eval()
        engine = AdapterEngine(model, tokenizer)
        scoped = [i for i in items if in_scope(i, scope)]
        started = time.perf_counter()
        scored = score_items(engine, scoped, params, progress=True, label=system)
        flag_outputs(scoped, scored, params.evaluate.flag_share)
        results[system] = {"requests": len(scoped), "metrics": summarise(scoped, scored, params.evaluate.calibration_bins),
                           "safety": safety_separation(scoped, scored), "flagged": sum(bool(s.flags) for s in scored),
                           "robustness": robustness(engine, scoped, scored, params, progress=True),
                           "seconds": round(time.perf_counter() - started, 1)}
        print(json.dumps({system: results[system]}, indent=2), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
