"""Serving throughput: `medlora serve`'s batched, routed multi-adapter inference against a naive loop and
the base model alone, on the same requests, in one run.

Run after `medlora run` (it reads the project's adapters, router and test notes, not the registry):

    .venv/bin/python bench/serve.py --root . [--requests 16] [--max-new-tokens 48] [--json serve.json]

Requests: `--requests` held-out notes (data/validated/test.parquet) over at least 3 expert groups, sent
at once to the real server (FastAPI on uvicorn, in this process, on loopback), streamed, so that the time
to first token is measured where a client sees it. Scenarios, each on the same notes:
- naive loop: one PEFT model holding every adapter; per request, set its expert's adapter and generate,
  one request at a time (the same precision policy, greedy, the same budgets);
- server, named experts: each request names its note's expert (the naive loop's work, batched);
- server, routed: `model: auto`, the router picks and mixes the experts per request;
- server, base: `model: base`, no adapter (the throughput LoRA serving is measured against).
Throughput: requests per second and generated tokens per second (outputs differ in length between
systems, while a batch runs until its longest row ends); latency p50/p95 and time to first token per
request; the router's share of each routed request's latency. Each scenario runs `--repeats` times,
interleaved; the median run is reported with every run's wall time. By default every request generates
its whole budget (vLLM's `ignore_eos`, as its serving benchmark does), so that systems whose answers end
sooner are not credited with less work; `--natural-length` lets answers end where the model ends them.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import platform
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import torch
import uvicorn
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.layout import ADAPTERS_DIR, VALIDATED_DIR  # noqa: E402
from tasks.base_model import load_base  # noqa: E402
from tasks.finetune.examples import Request, prompt_ids  # noqa: E402
from tasks.finetune.precision import autocast, resolve_precision  # noqa: E402
from tasks.params import load_params  # noqa: E402
from tasks.route.requests import feature_settings, routed_experts  # noqa: E402
from tasks.route.serve import RoutedSystem  # noqa: E402
from tasks.route.stage import EVALUATION_FILE, ROUTER_DIR, ROUTER_MODEL_DIR  # noqa: E402
from tasks.serve.api import create_app  # noqa: E402
from tasks.serve.batching import Batcher, ServeMetrics  # noqa: E402
from tasks.serve.engine import ServedSystem  # noqa: E402
from tasks.serve.reload import ModelHolder, ModelSource  # noqa: E402
from tasks.serve.safety import SafetyThresholds  # noqa: E402


def instruction_set() -> str:
    flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    return "AVX-512 BF16" if "avx512_bf16" in flags else "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else platform.machine()


def bench_notes(root: Path, count: int, experts: list[str]) -> list[tuple[str, str]]:
    """(expert, note) pairs, round robin over the expert groups of the test split."""
    test = pd.read_parquet(root / VALIDATED_DIR / "test.parquet")
    by_group = {g: list(frame["text"]) for g, frame in test.groupby("expert") if g in experts}
    if len(by_group) < 3:
        raise SystemExit(f"the test split has notes of {len(by_group)} routed expert groups; the bench needs 3")
    chosen, position = [], 0
    while len(chosen) < count:
        for group in sorted(by_group):
            if position < len(by_group[group]) and len(chosen) < count:
                chosen.append((group, by_group[group][position]))
        position += 1
        if position > max(len(v) for v in by_group.values()):
            break
    return chosen


def summary(name: str, wall: float, latencies: list[float], first_tokens: list[float], tokens: int,
            router: list[float] | None = None) -> dict:
    row = {"system": name, "requests": len(latencies), "wall_s": round(wall, 2), "tokens": tokens,
           "tokens_per_s": round(tokens / wall, 2), "requests_per_s": round(len(latencies) / wall, 3),
           "p50_s": round(float(np.percentile(latencies, 50)), 2), "p95_s": round(float(np.percentile(latencies, 95)), 2),
           "ttft_p50_s": round(float(np.percentile(first_tokens, 50)), 2) if first_tokens else None}
    if router:
        row["router_share"] = round(float(np.mean([r / l for r, l in zip(router, latencies)])), 4)
    return row


def median_run(runs: list[dict]) -> dict:
    """The run with the median wall time (the lower middle one of an even number), with how many there were."""
    ordered = sorted(runs, key=lambda r: r["wall_s"])
    return ordered[(len(ordered) - 1) // 2] | {"runs": len(runs), "wall_s_all": [r["wall_s"] for r in runs]}


def naive_loop(params, root: Path, notes: list[tuple[str, str]], budgets: dict, precision: str, ignore_eos: bool) -> dict:
    """Set the note's adapter, generate, next: PEFT's multi-adapter model, one request at a time."""
    from peft import PeftModel

    tokenizer, base = load_base(params.base_model, root)
    experts = sorted({e for e, _ in notes})
    model = PeftModel.from_pretrained(base, root / ADAPTERS_DIR / experts[0], adapter_name=experts[0])
    for expert in experts[1:]:
        model.load_adapter(root / ADAPTERS_DIR / expert, adapter_name=expert)
    model.eval()
    device = next(model.parameters()).device
    resolved = resolve_precision(precision, device)
    latencies, tokens = [], 0
    started = time.perf_counter()
    for expert, note in notes:
        ids = torch.tensor([prompt_ids(tokenizer, Request(text=note), budgets["note_tokens"])])
        model.set_adapter(expert)
        with torch.no_grad(), autocast(device, resolved):
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=budgets["max_new_tokens"],
                                 min_new_tokens=budgets["max_new_tokens"] if ignore_eos else 0, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        new = out[0, ids.shape[1]:]
        tokens += int((new != tokenizer.eos_token_id).sum())
        latencies.append(time.perf_counter() - started)  # all sent at once: each waits for those before it
    return summary("naive loop (set adapter, generate, one at a time)", time.perf_counter() - started, latencies, [], tokens)


def through_server(url: str, notes: list[tuple[str, str]], model_of, max_new_tokens: int, ignore_eos: bool) -> tuple[list, float]:
    """Every note sent at once, streamed; latency and first token timed per request from its sending."""

    barrier = threading.Barrier(len(notes))

    def send(pair):
        expert, note = pair
        barrier.wait()  # all at once, as concurrent clients would
        sent, first, extension, tokens = time.perf_counter(), None, {}, 0
        body = {"model": model_of(expert), "prompt": note, "max_tokens": max_new_tokens, "stream": True, "ignore_eos": ignore_eos}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=600) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if first is None and chunk["choices"][0]["text"]:
                    first = time.perf_counter() - sent
                extension = chunk.get("medlora", extension)
                tokens = (chunk.get("usage") or {}).get("completion_tokens", tokens)
        return time.perf_counter() - sent, first, extension, tokens

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(len(notes)) as pool:
        results = list(pool.map(send, notes))
    wall = time.perf_counter() - started
    return results, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("."))
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=0, help="0: the experts' target budget")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--window-ms", type=float, help="default: serve.batch_window_ms in params.yaml")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each scenario; the median run is reported")
    parser.add_argument("--natural-length", action="store_true",
                        help="let each answer end where the model ends it (default: every request generates the whole "
                             "budget, vLLM's ignore_eos, so that every system does the same work)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    root = args.root.resolve()
    params = load_params(root)
    experts = routed_experts(params, root / ADAPTERS_DIR)
    settings = feature_settings(params)
    budgets = {"note_tokens": settings["note_tokens"], "question_tokens": settings["question_tokens"],
               "max_new_tokens": args.max_new_tokens or params.finetune.max_target_tokens,
               "max_new_tokens_limit": params.serve.max_new_tokens_limit}
    notes = bench_notes(root, args.requests, [e for e in experts if e in params.experts])
    console = Console(width=220)
    console.print(f"{len(notes)} notes over {len({e for e, _ in notes})} experts; {instruction_set()}, "
                  f"{torch.get_num_threads()} threads, precision {params.finetune.precision}")

    evaluation = json.loads((root / ROUTER_DIR / EVALUATION_FILE).read_text())
    system = RoutedSystem(params.base_model, root / ROUTER_MODEL_DIR, {e: root / ADAPTERS_DIR / e for e in experts}, root,
                          precision=params.finetune.precision)
    served = ServedSystem(system, SafetyThresholds.from_dict(evaluation.get("safety")), budgets, "bench", "local")
    holder = ModelHolder(ModelSource("bench"))
    holder.current = served
    metrics = ServeMetrics()
    window = params.serve.batch_window_ms if args.window_ms is None else args.window_ms
    batcher = Batcher(lambda: holder.current, window, max(params.serve.max_batch_size, len(notes)),
                      params.serve.max_queue, metrics)
    batcher.start()
    server = uvicorn.Server(uvicorn.Config(create_app(holder, batcher, metrics, params.serve.max_request_chars),
                                           host="127.0.0.1", port=args.port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    url = f"http://127.0.0.1:{args.port}"
    while not server.started:
        time.sleep(0.1)
    through_server(url, notes[:2], lambda e: "base", 4, False)  # warm-up

    def batches() -> tuple[float, float]:
        samples = {s.name: s.value for m in metrics.batch_size.collect() for s in m.samples}
        return samples["medlora_batch_size_count"], samples["medlora_batch_size_sum"]

    scenarios = (("server: routed mix (auto)", lambda e: "auto"), ("server: named experts", lambda e: e),
                 ("server: base model", lambda e: "base"))
    runs: dict[str, list[dict]] = {name: [] for name, _ in scenarios}
    for _ in range(args.repeats):  # interleaved, so that a slow spell of the machine hits every scenario
        for name, model_of in scenarios:
            count = batches()[0]
            results, wall = through_server(url, notes, model_of, budgets["max_new_tokens"], not args.natural_length)
            latencies = [r[0] for r in results]
            firsts = [r[1] for r in results if r[1] is not None]
            router = [r[2].get("router_ms", 0) / 1000 for r in results] if "auto" in name else None
            runs[name].append(summary(name, wall, latencies, firsts, sum(r[3] for r in results), router)
                              | {"batches": int(batches()[0] - count)})
    server.should_exit = True
    batcher.stop()
    holder.current = None  # frees the served model before the naive loop loads its own
    del system, served
    runs["naive"] = [naive_loop(params, root, notes, budgets, params.finetune.precision, not args.natural_length)
                     for _ in range(args.repeats)]
    table_rows = [median_run(r) for r in runs.values()]
    naive = table_rows[-1]
    by_name = {r["system"]: r for r in table_rows}
    routed, named, base = (by_name["server: routed mix (auto)"], by_name["server: named experts"], by_name["server: base model"])
    ratios = {"named experts vs naive loop (requests/s)": round(named["requests_per_s"] / naive["requests_per_s"], 2),
              "routed vs naive loop (requests/s)": round(routed["requests_per_s"] / naive["requests_per_s"], 2),
              "routed vs base (tokens/s)": round(routed["tokens_per_s"] / base["tokens_per_s"], 3),
              "named experts vs base (tokens/s)": round(named["tokens_per_s"] / base["tokens_per_s"], 3),
              "router share of request latency": routed.get("router_share")}
    table = Table(title=f"serving {len(notes)} concurrent requests ({instruction_set()}, {torch.get_num_threads()} threads)")
    columns = list(dict.fromkeys(key for row in table_rows for key in row))
    for column in columns:
        table.add_column(column)
    for row in table_rows:
        table.add_row(*(str(row.get(c, "")) for c in columns))
    console.print(table)
    for key, value in ratios.items():
        console.print(f"{key}: {value}")
    if args.json:
        args.json.write_text(json.dumps({"instruction_set": instruction_set(), "threads": torch.get_num_threads(),
                                         "rows": table_rows, "ratios": ratios}, indent=2))


if __name__ == "__main__":
    main()
