"""What a served bundle does with a batch of requests: route the ones that ask for the router's mix, give
the others their named expert (or the base model), and answer every row in one generation pass with its
own mix of adapters, its own token budget and its own sampling settings (tasks/finetune/inference.py).
A distilled student is served the same way, as a system of one model with no router and no experts.
The bundle's `predict` and `medlora serve`'s batches both call `ServedSystem.answer`."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from tasks.finetune.examples import Request, prompt_ids
from tasks.finetune.inference import BatchOptions, Plan, PlannedEngine, best_answer, generate_batch, weights_fingerprint
from tasks.route.serve import RoutedSystem
from tasks.serve.safety import SafetyThresholds

AUTO = "auto"    # the router's mix
BASE = "base"    # no adapter


class DenseSystem:
    """One causal LM answers every request: no router, no adapters (a distilled student). It routes nothing and
    mixes nothing, so that `ServedSystem` and evaluation treat it as they treat a routed system."""

    experts: tuple[str, ...] = ()

    def __init__(self, model: torch.nn.Module, tokenizer, precision: str = "auto"):
        self.model, self.tokenizer, self.precision = model.eval(), tokenizer, precision
        self.identity = f"dense:{weights_fingerprint(model)}"

    @classmethod
    def load(cls, model_dir: str, precision: str = "auto") -> DenseSystem:
        from transformers import AutoModelForCausalLM

        from tasks.base_model import load_tokenizer, pick_device

        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(pick_device("auto"))
        return cls(model, load_tokenizer(str(model_dir)), precision)

    def plan(self, requests) -> Plan:
        return Plan(None, [self.identity] * len(requests))

    def route(self, requests, progress: bool = False) -> list[dict]:
        return [{"weights": {}, "probabilities": {}, "expert": None, "fallback": False} for _ in requests]

    def mixed(self, weights: torch.Tensor, rows: int):
        return None


@dataclass
class Ask:
    """One request to the served system."""

    request: Request
    model: str = AUTO
    max_new_tokens: int | None = None   # None: the bundle's budget
    temperature: float = 0.0            # 0: greedy
    top_p: float = 1.0
    ignore_eos: bool = False            # generate the whole budget (benchmarks of equal work, as vLLM's)


@dataclass
class Answer:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finished: str                         # "stop" (end of sequence) or "length" (budget)
    model: str                            # what answered: "auto", an expert or "base"
    weights: dict[str, float]             # each expert's weight in the mix that answered
    expert: str | None                    # the router's most probable expert (auto), or the one named
    flags: list[str] = field(default_factory=list)
    answer: str | None = None             # questions: yes / no / maybe
    answer_probabilities: dict[str, float] | None = None
    version: str = ""                     # the bundle version that answered
    router_seconds: float = 0.0           # routing time of its batch (0 when the request named its expert)

    @property
    def needs_review(self) -> bool:
        return bool(self.flags)


@dataclass
class BatchTimings:
    router_seconds: float = 0.0
    generation_seconds: float = 0.0


class ServedSystem:
    """A bundle loaded for serving: the routed system, its safety thresholds and generation settings."""

    def __init__(self, system: RoutedSystem | DenseSystem, safety: SafetyThresholds, budgets: dict, name: str = "", version: str = ""):
        """`budgets`: note_tokens and question_tokens (prompt cuts, as the experts were trained), max_new_tokens
        (what a request that names none gets) and max_new_tokens_limit (the most a request may ask)."""
        self.system, self.safety, self.budgets = system, safety, budgets
        self.name, self.version = name, version
        self.engine = PlannedEngine(system.model, system.tokenizer, precision=system.precision)

    @property
    def experts(self) -> list[str]:
        return list(self.system.experts)

    @property
    def models(self) -> list[str]:
        """What a request's `model` may name (a system without experts is one model: `auto`)."""
        return [AUTO, *self.experts, BASE] if self.experts else [AUTO]

    def check(self, ask: Ask) -> None:
        """A ValueError with a short message for an ask this system cannot answer."""
        if ask.model not in self.models:
            raise ValueError(f"model {ask.model!r} is not served; choose one of {', '.join(self.models)}")
        limit = self.budgets["max_new_tokens_limit"]
        if ask.max_new_tokens is not None and not 1 <= ask.max_new_tokens <= limit:
            raise ValueError(f"max_tokens is {ask.max_new_tokens}; it must be between 1 and {limit}")
        if ask.temperature < 0 or ask.temperature > 2 or not 0 < ask.top_p <= 1:
            raise ValueError("temperature must be in [0, 2] and top_p in (0, 1]")

    def prompt(self, request: Request) -> list[int]:
        budget = self.budgets["question_tokens"] if request.is_question else self.budgets["note_tokens"]
        return prompt_ids(self.system.tokenizer, request, budget)

    def _weights(self, asks: Sequence[Ask], routes: dict[int, dict]) -> torch.Tensor:
        weights = torch.zeros(len(asks), len(self.experts))
        for row, ask in enumerate(asks):
            if row in routes:
                weights[row] = torch.tensor([routes[row]["weights"].get(e, 0.0) for e in self.experts])
            elif ask.model != BASE:
                weights[row, self.experts.index(ask.model)] = 1.0
        return weights

    def answer(self, asks: Sequence[Ask], on_step: Callable[[list[int]], None] | None = None,
               cancelled: Callable[[int], bool] | None = None, timings: BatchTimings | None = None) -> list[Answer]:
        """Every ask answered in one generation pass (the caller sizes batches). `on_step(tokens)` receives
        each step's new token per row; `cancelled(row)` stops a row early."""
        for ask in asks:
            self.check(ask)
        timings = timings or BatchTimings()
        started = time.perf_counter()
        routed = [i for i, ask in enumerate(asks) if ask.model == AUTO]
        routes = dict(zip(routed, self.system.route([asks[i].request for i in routed])))
        timings.router_seconds = time.perf_counter() - started
        weights = self._weights(asks, routes)
        prompts = [self.prompt(ask.request) for ask in asks]
        limits = [ask.max_new_tokens or self.budgets["max_new_tokens"] for ask in asks]
        options = BatchOptions(limits, [a.temperature for a in asks], [a.top_p for a in asks], on_step, cancelled,
                               [a.ignore_eos for a in asks])
        started = time.perf_counter()
        mixed = self.system.mixed(weights, len(asks)) if weights.any() else None  # base alone: no adapter work
        rows = generate_batch(self.engine, prompts, max(limits), mixed, options)
        timings.generation_seconds = time.perf_counter() - started
        answers = []
        for row, (ask, result) in enumerate(zip(asks, rows)):
            route = routes.get(row)
            answer = Answer(result["text"], len(prompts[row]), result["tokens"],
                            "length" if result["tokens"] >= limits[row] else "stop", ask.model,
                            {e: round(float(w), 6) for e, w in zip(self.experts, weights[row]) if w},
                            route["expert"] if route else (None if ask.model == BASE else ask.model), version=self.version,
                            router_seconds=timings.router_seconds if route else 0.0)
            # Questions are judged where their decision is read (the first step), as evaluation judges them.
            decision = result["decision"]
            entropy, energy = ((decision["entropy"], decision["energy"]) if ask.request.is_question
                               else (result["token_entropy"], result["energy"]))
            answer.flags = self.safety.flags(ask.request, result["text"], entropy, energy, route)
            if ask.request.is_question:
                probabilities = {a: round(p, 6) for a, p in result["decision"]["probabilities"].items()}
                answer.answer, answer.answer_probabilities = best_answer(probabilities), probabilities
            answers.append(answer)
        return answers
