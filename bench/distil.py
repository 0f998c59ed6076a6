"""How much of the routed bundle does a depth-pruned student keep, and how much faster is it? The distil stage's own
code (tasks/distil/stage.py) once per number of kept layers: student, supervised-only student of the same size and
start, teacher (the routed bundle) and base model on the project's held-out notes (ROUGE-L) and PubMedQA questions
(accuracy), tokens/s of one batch through the serving code, parameters, peak memory.

Run in a project where the stages up to route have run on MTSamples and PubMedQA (`medlora run --preset mtsamples`,
or docs/BENCHMARKS.md for the smaller teacher measured there):

    .venv/bin/python bench/distil.py --root PROJECT --keep 24 20 15 10 [--set distil.max_steps=30 ...] [--json out.json]

The teacher's top-k logits and generations are computed at the first point and read from the project's caches after
(data/cache/), so every point distils from the same teacher outputs. Results are written after each point.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.scale_out import instruction_set  # noqa: E402
from tasks.distil.stage import distil  # noqa: E402
from tasks.params import load_params, parse_assignment  # noqa: E402


def nested(assignments: list[str]) -> dict:
    tree: dict = {}
    for text in assignments:
        key, value = parse_assignment(text)
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def point_row(keep, result: dict, seconds: float) -> dict:
    rows = {row["system"]: row for row in result["held_out"]}
    student, baseline, teacher, base = (rows.get(k, {}) for k in ("student", "supervised-only student", "teacher (routed bundle)", "base model"))
    row = {"keep": keep, "kept_layers": result["how"].get("kept_layers"), "merged": result["how"].get("merged"),
           "parameters": student["parameters"], "tokens_per_s": student["tokens_per_s"],
           "speedup_over_teacher": result["speedup_over_teacher"], "seconds": round(seconds, 1)}
    for metric in ("rouge_l", "accuracy", "perplexity"):
        for name, system in (("student", student), ("supervised_only", baseline), ("teacher", teacher), ("base", base)):
            if metric in system:
                row[f"{metric}_{name}"] = system[metric]
    row |= {k.replace("kept_", "share_of_teacher_"): v for k, v in result["teacher_share_kept"].items()}
    row["teacher_tokens_per_s"], row["base_tokens_per_s"] = teacher["tokens_per_s"], base["tokens_per_s"]
    row["cache"] = result["cache"]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--keep", nargs="+", type=float, default=[24, 20, 15, 10], help="decoder layers kept (counts or shares)")
    parser.add_argument("--set", dest="assignments", action="append", default=[], help="a params override, e.g. distil.max_steps=30")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    root = args.root.resolve()
    console = Console(width=200)
    console.print(f"CPU: {os.cpu_count()} cores, {instruction_set()}; load average {os.getloadavg()[0]:.2f} at start")
    points = []
    for keep in args.keep:
        keep = int(keep) if keep >= 1 else keep
        overrides = nested(args.assignments)
        overrides.setdefault("distil", {})["keep_layers"] = keep
        params = load_params(root, overrides)
        started = time.perf_counter()
        result = distil(params, root)
        points.append(point_row(keep, result, time.perf_counter() - started))
        console.print(json.dumps(points[-1]))
        if args.json:
            args.json.write_text(json.dumps({"cpu": instruction_set(), "cores": os.cpu_count(), "settings": params.distil.model_dump(),
                                             "points": points, "last": result}, indent=2))
    table = Table(title="Depth-pruned students of the routed bundle (held-out)")
    for column in ("kept layers", "parameters", "tokens/s (x teacher)", "ROUGE-L student / sup.-only / teacher / base",
                   "accuracy student / sup.-only / teacher / base", "share of teacher kept"):
        table.add_column(column)
    for p in points:
        quality = lambda m: " / ".join(str(p.get(f"{m}_{n}", "-")) for n in ("student", "supervised_only", "teacher", "base"))  # noqa: E731
        table.add_row(str(len(p["kept_layers"] or []) or p["keep"]), f"{p['parameters'] / 1e6:.1f} M",
                      f"{p['tokens_per_s']} ({p['speedup_over_teacher']}x)", quality("rouge_l"), quality("accuracy"),
                      ", ".join(f"{k.removeprefix('share_of_teacher_')} {v:.0%}" for k, v in p.items() if k.startswith("share_of_teacher_")))
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
