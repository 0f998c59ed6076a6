"""The evaluate stage's work as plain functions: find the candidates in the MLflow registry, score each on
its held-out data beside the base model and its model's current champion, and pick what people review.

A candidate is the newest version of any model registered under the project's prefix that is not already
its champion: every expert and composed expert, the bundle (router and experts), and whatever joins them later (a student)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from mlflow import MlflowClient

from tasks.evaluate.evaluation import (ALL_REQUESTS, HeldOutItem, ScoredItem, flag_outputs, in_scope, review_sample,
                                       robustness, safety_separation, score_items, summarise)
from tasks.finetune.inference import AdapterEngine, Engine, InferenceCache, mixture_identity, weights_fingerprint
from tasks.params import MULTITASK_EXPERT, Params
from tasks.promote.gate import CHAMPION, alias_version
from tasks.register.registry import registered_name
# Registered candidates are pyfunc models of these classes: loading one runs this code, so evaluation depends on it.
from tasks.register import expert_model  # noqa: F401
from tasks.serve import bundle  # noqa: F401

EVALUATION_DIR = Path("reports/evaluation")
EVALUATION_FILE = "evaluation.json"


@dataclass(frozen=True)
class CandidateRef:
    model: str
    version: str
    scope: str          # which held-out requests it answers: an expert group, a task, or all

    @property
    def key(self) -> str:
        return f"{self.model}/{self.version}"

    @property
    def uri(self) -> str:
        return f"models:/{self.model}/{self.version}"


def candidate_refs(client: MlflowClient, prefix: str) -> list[CandidateRef]:
    """The newest version of each model registered under `prefix`, unless it is already the champion."""
    refs = []
    for model in sorted(client.search_registered_models(filter_string=f"name LIKE '{prefix}-%'"), key=lambda m: m.name):
        versions = client.search_model_versions(f"name='{model.name}'")
        newest = max(versions, key=lambda v: int(v.version))
        if alias_version(client, model.name, CHAMPION) == str(newest.version):
            continue
        refs.append(CandidateRef(model.name, str(newest.version), newest.tags.get("expert", ALL_REQUESTS)))
    return refs


class CandidateLoadError(RuntimeError):
    """A registered version that cannot be loaded (deleted artifacts, or code it was logged with that is gone)."""


def load_registered_engine(uri: str) -> Engine:
    """Any registered pyfunc model of ours that offers `evaluation_engine()` (experts, the bundle, ...)."""
    import mlflow

    try:
        return mlflow.pyfunc.load_model(uri).unwrap_python_model().evaluation_engine()
    except Exception as error:  # noqa: BLE001 - whatever the cause, this candidate cannot be evaluated
        raise CandidateLoadError(f"{uri} could not be loaded ({type(error).__name__}: {error})") from error


@dataclass
class SystemResult:
    items: list[HeldOutItem]
    scored: list[ScoredItem]


def _score(engine_factory: Callable[[], Engine], items: list[HeldOutItem], params: Params, progress: bool, label: str,
           adversarial: bool = False, cache: InferenceCache | None = None) -> tuple[SystemResult, list[dict]]:
    engine = engine_factory()
    scored = score_items(engine, items, params, progress=progress, label=label, cache=cache)
    robust = robustness(engine, items, scored, params, progress, cache) if adversarial else []
    held = [weakref.ref(engine), *([weakref.ref(engine.model)] if hasattr(engine, "model") else [])]
    del engine
    # Free the weights before the next system loads. Reference counting normally does; a full collection (about a
    # second in a large process, once per system) only when a reference cycle still holds them.
    if any(ref() is not None for ref in held):
        gc.collect()
    return SystemResult(items, scored), robust


def evaluate_candidates(params: Params, items: list[HeldOutItem], refs: list[CandidateRef],
                        base_engine: Callable[[], Engine], champions: dict[str, str],
                        load_engine: Callable[[str], Engine] = load_registered_engine,
                        progress: bool = True, cache: InferenceCache | None = None) -> tuple[dict, dict[str, SystemResult]]:
    """Every candidate on its scope with metrics, safety separation and robustness; the base model and each
    candidate's current champion (`champions`: model name -> version) on the same requests.

    With `cache`, each system's outputs on requests it has answered before (in the route stage, or in an
    earlier evaluation on the same data) are re-used: a model version is evaluated once per data version.
    Returns the evaluation (JSON-ready) and each candidate's scored outputs (for the review queue)."""
    base, _ = _score(base_engine, items, params, progress, "base model", cache=cache)
    bins = params.evaluate.calibration_bins
    evaluation = {"base_model": params.base_model, "requests": len(items),
                  "base": {"metrics": summarise(items, base.scored, bins), "safety": safety_separation(items, base.scored)},
                  "candidates": []}
    results = {}
    for ref in refs:
        rows = [k for k, item in enumerate(items) if in_scope(item, ref.scope)]
        if not rows:
            evaluation["candidates"].append({**asdict(ref), "key": ref.key, "skipped": f"no held-out requests for scope {ref.scope!r}"})
            continue
        scoped = [items[k] for k in rows]
        try:
            result, robust = _score(lambda: load_engine(ref.uri), scoped, params, progress, ref.key, adversarial=True, cache=cache)
        except CandidateLoadError as error:  # e.g. a model registered by an older medlora: kept out, with the reason
            evaluation["candidates"].append({**asdict(ref), "key": ref.key, "skipped": str(error)})
            continue
        flag_outputs(scoped, result.scored, params.evaluate.flag_share)
        results[ref.key] = result
        champion = None
        if champions.get(ref.model):
            held, _ = _score(lambda: load_engine(f"models:/{ref.model}/{champions[ref.model]}"), scoped, params, progress,
                             f"{ref.model} champion", cache=cache)
            champion = {"version": champions[ref.model], "metrics": summarise(scoped, held.scored, bins)}
        evaluation["candidates"].append({
            **asdict(ref), "key": ref.key, "metrics": summarise(scoped, result.scored, bins),
            "base_metrics": summarise(scoped, [base.scored[k] for k in rows], bins), "champion": champion,
            "safety": safety_separation(scoped, result.scored), "robustness": robust,
            "flagged": sum(bool(s.flags) for s in result.scored)})
    _compare_with_multitask(evaluation, results, refs, items, params, champions, load_engine, progress, cache)
    return evaluation, results


def _compare_with_multitask(evaluation: dict, results: dict[str, SystemResult], refs: list[CandidateRef],
                            items: list[HeldOutItem], params: Params, champions: dict[str, str],
                            load_engine: Callable[[str], Engine], progress: bool, cache: InferenceCache | None) -> None:
    """A specialty expert earns its place only by beating the multi-task adapter on its own group too: each
    specialty candidate gets `multitask_metrics`, the multi-task adapter's on the same requests (the candidate
    evaluated here, else the champion), which the promotion gate checks like the base model's."""
    specialty = [c for c in evaluation["candidates"] if c["scope"] in params.experts and "skipped" not in c]
    if not specialty:
        return
    multitask = next((ref for ref in refs if ref.scope == MULTITASK_EXPERT and ref.key in results), None)
    if multitask is not None:
        source, held = multitask.key, results[multitask.key]
    else:
        name = registered_name(params, MULTITASK_EXPERT)
        if name not in champions:  # no multi-task adapter, evaluated or promoted: nothing to compare with
            return
        notes = [item for item in items if in_scope(item, MULTITASK_EXPERT)]
        source = f"{name}/{champions[name]}"
        held, _ = _score(lambda: load_engine(f"models:/{source}"), notes, params, progress, f"{name} champion", cache=cache)
    scored_by_id = {item.id: scored for item, scored in zip(held.items, held.scored)}
    for candidate in specialty:
        scoped = [item for item in items if in_scope(item, candidate["scope"])]
        candidate["multitask"] = source
        candidate["multitask_metrics"] = summarise(scoped, [scored_by_id[item.id] for item in scoped],
                                                   params.evaluate.calibration_bins)


def base_engine_factory(params: Params, root: Path) -> Callable[[], Engine]:
    def load() -> Engine:
        from tasks.base_model import load_base, pick_device

        tokenizer, model = load_base(params.base_model, root, pick_device(params.finetune.device))
        return AdapterEngine(model, tokenizer, mixture_identity(weights_fingerprint(model), []), params.finetune.precision)

    return load


def queue_items(refs: list[CandidateRef], results: dict[str, SystemResult], count: int, seed: int) -> list:
    """What people review: per candidate, its flagged outputs first, then a random sample (all de-identified)."""
    from tasks.review.store import QueueItem

    queue = []
    for ref in refs:
        if ref.key not in results:
            continue
        result = results[ref.key]
        for k, how in review_sample(result.items, result.scored, count, seed):
            item, scored = result.items[k], result.scored[k]
            output = scored.text if scored.answer is None else f"[decision: {scored.answer} ({scored.confidence:.0%})] {scored.text}"
            queue.append(QueueItem(candidate=ref.key, model=ref.model, version=ref.version, request_id=item.id,
                                   input_text=item.shown_input, output_text=output, reference=item.target,
                                   flags=list(scored.flags), priority=float(len(scored.flags)), sampled=how))
    return queue
