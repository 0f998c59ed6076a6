"""The routed system: base model + router + every expert, mixed per request.

`medlora route` writes each record's routing (for auditing on one's own labelled notes); the served
bundle (tasks/serve/) answers requests with the mixes its routes choose."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from tasks.base_model import load_base, pick_device
from tasks.finetune.examples import Request
from tasks.finetune.inference import Plan
from tasks.finetune.predict import PredictionCounts, read_requests
from tasks.route.features import featurise
from tasks.route.mixing import CombinationCache, ExpertMixture, save_adapter
from tasks.route.router import Router


class RoutedSystem:
    def __init__(self, base_model: str, router_dir: Path, adapter_dirs: dict[str, Path], root: Path = Path("."),
                 precision: str = "auto"):
        """`adapter_dirs`: the PEFT adapter of each expert the router was trained with, and of any other
        expert to be served by name (the multi-task adapter)."""
        self.router = Router.load(router_dir)
        missing = [e for e in self.router.experts if e not in adapter_dirs]
        if missing:
            raise FileNotFoundError(f"{router_dir}: the router routes to {missing}, whose adapters were not given")
        self.device = pick_device("auto")
        self.precision = precision  # the one policy (tasks/finetune/precision.py), as evaluated
        self.tokenizer, base = load_base(base_model, root, self.device)
        names = [*self.router.experts, *(e for e in adapter_dirs if e not in self.router.experts)]
        self.mixture = ExpertMixture.from_adapter_dirs(base, {e: adapter_dirs[e] for e in names})

    @property
    def model(self):
        return self.mixture.model

    @property
    def experts(self) -> list[str]:
        """Every expert a request may name: the routed ones, then any other served by name."""
        return list(self.mixture.names)

    def mixed(self, weights: torch.Tensor, rows: int):
        """The context in which a batch of `rows` runs with each row's mix of experts."""
        return self.mixture.mixed(weights, rows)

    def plan(self, requests: list[Request]) -> Plan:
        """Routes every request once; each batch then runs with its rows' mixes (what evaluation scores)."""
        return self.mixture.engine(self.tokenizer, self._weights(self.route(list(requests)))).plan(requests)

    def _weights(self, routes: list[dict]) -> torch.Tensor:
        """(routes, experts of the mixture): each route's weights; experts the router does not choose get 0."""
        return torch.tensor([[r["weights"].get(e, 0.0) for e in self.mixture.names] for r in routes])

    def route(self, requests: list[Request], progress: bool = False) -> list[dict]:
        """Per request: the probability and the mixing weight of each expert, the most probable one,
        and whether it falls back to the base model."""
        if not requests:
            return []
        settings = self.router.settings
        features = featurise(self.mixture.model, self.tokenizer, requests, self.router.vectoriser, settings,
                             precision=self.precision, progress=progress)
        probabilities, weights = self.router.route(features)
        return [{"weights": {e: round(float(w), 6) for e, w in zip(self.router.experts, row_w)},
                 "probabilities": {e: round(float(p), 6) for e, p in zip(self.router.experts, row_p)},
                 "expert": self.router.experts[int(row_p.argmax())], "fallback": bool(row_w.sum() == 0)}
                for row_p, row_w in zip(probabilities, weights)]


def export_merged_adapters(system: RoutedSystem, routes: list[dict], directory: Path, cache: CombinationCache) -> None:
    """Give each route the name of a PEFT adapter under `directory` that holds its mix merged (`cat`), for
    engines that load one adapter per request (vLLM, LoRAX). Routes that round to the same weights share one."""
    for route in routes:
        weights = [route["weights"][e] for e in system.router.experts]
        key = cache.key(weights)
        if not any(key):
            route["adapter"] = None  # the base model
            continue
        name = "mix-" + hashlib.sha1(json.dumps([system.router.experts, key]).encode()).hexdigest()[:12]
        if not (directory / name).exists():
            state, config = cache.merged(weights)
            save_adapter(state, config, directory / name)
            (directory / name / "mix.json").write_text(json.dumps(dict(zip(system.router.experts, key)), indent=2))
        route["adapter"] = name


def route_file(system: RoutedSystem, input_path: Path, output_path: Path, progress: bool = True,
               merged_dir: Path | None = None, cache_size: int = 32, grid: float = 0.05) -> PredictionCounts:
    """One output line per input line, in order: `id` with `weights`, `probabilities`, `expert` and
    `fallback` (and `adapter` with `merged_dir`), or `id` with `error` naming the file, line and field."""
    records, requests, errors = read_requests(input_path)
    valid = [i for i, request in enumerate(requests) if request is not None]
    routed = system.route([requests[i] for i in valid], progress)
    if merged_dir is not None:
        export_merged_adapters(system, routed, merged_dir, CombinationCache(system.mixture.experts, cache_size, grid))
    routes = dict(zip(valid, routed))
    output_path.parent.mkdir(parents=True, exist_ok=True)
    with output_path.open("w", encoding="utf-8") as out:
        for index, record in enumerate(records):
            line = {"id": record.get("id")} | (routes[index] if index in routes else {"error": errors[index]})
            out.write(json.dumps(line, ensure_ascii=False) + "\n")
    return PredictionCounts(len(records), len(valid), len(records) - len(valid))
