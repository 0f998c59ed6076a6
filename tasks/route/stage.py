"""The route stage's work as plain functions: build the routing problem from the validated notes and
task data, train the configured router, score routing and the five downstream schemes, compose
experts for specialties that have none, and write everything under models/router/."""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tasks.evaluate.metrics import rouge_l
from tasks.base_model import load_base, pick_device
from tasks.finetune.inference import InferenceCache, scored_generate, target_token_losses
from tasks.params import MULTITASK_EXPERT, Params
from tasks.route.compose import compose
from tasks.route.evaluate import routing_report
from tasks.route.features import LexicalVectoriser, RequestFeatures, depth_of, featurise_layers
from tasks.route.losses import MixtureLoss
from tasks.route.mixing import ExpertMixture, merged_adapter_state, save_adapter
from tasks.route.requests import (SPLITS, LabelledRequests, feature_settings, labelled_requests, routed_experts,
                                  tokenized_examples)
from tasks.route.router import Router
from tasks.route.strategies import STRATEGIES, RoutingProblem, TrainingLog, accuracy
from tasks.serve.safety import calibrate

ROUTER_DIR = Path("models/router")
ROUTER_MODEL_DIR = ROUTER_DIR / "router"
COMPOSED_DIR = ROUTER_DIR / "composed"
EVALUATION_FILE = "evaluation.json"


@dataclass
class RoutingSetup:
    """Everything the stage's steps share: the base model with every adapter installed, the requests
    per split with their features and tokenized targets."""

    params: Params
    experts: list[str]             # what the router chooses among
    mixture: ExpertMixture         # routed experts, then the multi-task adapter when there is one
    tokenizer: object
    requests: dict[str, LabelledRequests]
    features: dict[str, RequestFeatures]
    vectoriser: LexicalVectoriser | None
    settings: dict
    precision: str
    cache: InferenceCache | None = None  # generations and losses shared with the evaluate stage
    layer_selection: dict | None = None  # validation routing accuracy per candidate layer, and the one chosen

    def weights_over_mixture(self, routed: torch.Tensor) -> torch.Tensor:
        """Weights over the routed experts, widened to every adapter in the mixture (others at 0)."""
        full = torch.zeros(len(routed), len(self.mixture.names))
        full[:, : len(self.experts)] = routed
        return full

    def labels(self, split: str) -> torch.Tensor:
        return torch.tensor(self.requests[split].labels, dtype=torch.long)


def prepare(params: Params, root: Path, adapters_dir: Path, notes: dict[str, pd.DataFrame], progress: bool = True,
            feature_cache: Path | None = None, cache: InferenceCache | None = None) -> RoutingSetup:
    """`feature_cache`: a file to keep the features in between runs of a benchmark (written when absent);
    `cache`: where generations and target losses are kept for the evaluate stage to re-use."""
    experts = routed_experts(params, adapters_dir)
    if not experts:
        raise FileNotFoundError(f"{adapters_dir}: no trained expert adapters to route among; run the finetune stage first")
    device = pick_device(params.finetune.device)
    tokenizer, base = load_base(params.base_model, root, device)
    base.requires_grad_(False)
    installed = experts + ([MULTITASK_EXPERT] if (adapters_dir / MULTITASK_EXPERT / "adapter_config.json").exists() else [])
    mixture = ExpertMixture.from_adapter_dirs(base, {name: adapters_dir / name for name in installed})
    requests = labelled_requests(params, root, notes, experts)
    settings = feature_settings(params) | {"top_k": params.route.top_k, "min_confidence": params.route.min_confidence}
    vectoriser = (LexicalVectoriser(params.route.lexical_buckets).fit(requests["train"].requests)
                  if params.route.lexical_buckets else None)
    precision = params.finetune.precision
    candidates = layer_candidates(params, depth_of(base))
    if feature_cache is not None and feature_cache.exists():
        by_layer = torch.load(feature_cache, weights_only=False)
    else:
        by_layer = {split: featurise_layers(base, tokenizer, part.requests, vectoriser, settings, candidates,
                                            precision=precision, progress=progress) for split, part in requests.items()}
        if feature_cache is not None:
            torch.save(by_layer, feature_cache)
    setup = RoutingSetup(params, experts, mixture, tokenizer, requests, {}, vectoriser, settings, precision, cache)
    chosen, scores = choose_layer(setup, by_layer, candidates)
    setup.settings["layer"] = chosen
    setup.features = {split: by_layer[split][chosen] for split in by_layer}
    setup.layer_selection = {"chosen": chosen, "val_accuracy": scores, "tolerance": params.route.layer_tolerance}
    return setup


def layer_candidates(params: Params, depth: int) -> list[int]:
    """The configured layers the base model has, cheapest first (0, the last layer, costs `depth`)."""
    layers = params.route.layer if isinstance(params.route.layer, list) else [params.route.layer]
    kept = list({layer or depth: layer for layer in layers if layer <= depth}.values())  # 0 and `depth` are one layer
    if not kept:
        raise ValueError(f"route.layer {params.route.layer}: the base model has decoder layers 1 to {depth} (0: the last)")
    return sorted(kept, key=lambda layer: layer or depth)


def choose_layer(setup: RoutingSetup, by_layer: dict[str, dict[int, RequestFeatures]], candidates: list[int]) -> tuple[int, dict]:
    """With one candidate, that one. Else a supervised router per candidate, trained on the training split and
    scored on validation; the cheapest within `route.layer_tolerance` of the best accuracy wins (serving
    runs its layers for every routed request). Without labelled validation requests, the deepest."""
    if len(candidates) == 1:
        return candidates[0], {}
    params = setup.params
    scores = {}
    for layer in candidates:
        problem = RoutingProblem(setup.experts, by_layer["train"][layer], setup.labels("train"), by_layer["val"][layer],
                                 setup.labels("val"), setup.vectoriser, {**setup.settings, "layer": layer, "strategy": "supervised"})
        router, _ = STRATEGIES["supervised"](problem, params.route, params.seed)
        scores[layer] = round(accuracy(router, by_layer["val"][layer], setup.labels("val")), 4)
    if any(math.isnan(score) for score in scores.values()):
        return candidates[-1], scores
    best = max(scores.values())
    return next(layer for layer in candidates if scores[layer] >= best - params.route.layer_tolerance), scores


def train_router(setup: RoutingSetup, progress: bool = True) -> tuple[Router, TrainingLog, MixtureLoss | None]:
    params = setup.params
    train_loss = None
    problem = RoutingProblem(setup.experts, setup.features["train"], setup.labels("train"), setup.features["val"],
                             setup.labels("val"), setup.vectoriser, {**setup.settings, "strategy": params.route.strategy})
    if params.route.strategy == "reinforce":
        examples = tokenized_examples(params, setup.tokenizer, setup.requests["train"])
        train_loss = MixtureLoss(setup.mixture, examples, setup.tokenizer.pad_token_id,
                                 params.finetune.generation_batch_size, setup.precision)
        # The routed experts come first in the mixture, so a subset of them indexes it as is.
        problem.subset_losses = train_loss.subset_losses
    router, log = STRATEGIES[params.route.strategy](problem, params.route, params.seed, progress)
    return router, log, train_loss


def routing_evaluation(router: Router, setup: RoutingSetup, split: str = "test") -> dict:
    """Routing accuracy, confusion and utilisation on held-out notes, and on held-out questions when there are any."""
    part, features = setup.requests[split], setup.features[split]
    labels = setup.labels(split)
    probabilities, weights = router.route(features)
    result = {}
    note_rows = [i for i, (r, label) in enumerate(zip(part.requests, labels.tolist())) if not r.is_question and label >= 0]
    question_rows = [i for i, r in enumerate(part.requests) if r.is_question]
    for name, rows in (("notes", note_rows), ("questions", question_rows)):
        if rows:
            result[name] = routing_report(probabilities[rows], weights[rows], labels[rows], setup.experts)
    return result


def downstream_table(router: Router, setup: RoutingSetup, split: str = "test", limit: int = 0, generate_text: bool = True,
                     progress: bool = True, systems: list[str] | None = None) -> list[dict]:
    """Held-out target loss and ROUGE-L on labelled notes for: the base model, the multi-task adapter
    (when trained), the router's mixture, the oracle expert (the note's own) and a uniform mix of the
    routed experts (or only the `systems` named)."""
    params, part = setup.params, setup.requests[split]
    rows = [i for i, (r, label) in enumerate(zip(part.requests, part.labels)) if not r.is_question and label >= 0]
    if limit:
        rows = sorted(random.Random(params.seed).sample(rows, min(limit, len(rows))))
    if not rows:
        return []
    routed = len(setup.experts)
    _, router_weights = router.route(setup.features[split][rows])
    oracle = torch.zeros(len(rows), routed)
    oracle[torch.arange(len(rows)), torch.tensor([part.labels[i] for i in rows])] = 1.0
    schemes = {"base model": torch.zeros(len(rows), routed)}
    if MULTITASK_EXPERT in setup.mixture.names:
        schemes["multi-task LoRA"] = None
    schemes |= {"router mixture": router_weights, "oracle expert": oracle,
                "uniform mixture": torch.full((len(rows), routed), 1.0 / routed)}
    requests = [part.requests[i] for i in rows]
    examples = tokenized_examples(params, setup.tokenizer, LabelledRequests(
        requests, [part.targets[i] for i in rows], [part.labels[i] for i in rows], [part.groups[i] for i in rows]))
    settings = params.finetune
    table = []
    for system, routed_weights in schemes.items():
        if systems is not None and system not in systems:
            continue
        if routed_weights is None:
            weights = torch.zeros(len(rows), len(setup.mixture.names))
            weights[:, setup.mixture.names.index(MULTITASK_EXPERT)] = 1.0
        else:
            weights = setup.weights_over_mixture(routed_weights)
        engine = setup.mixture.engine(setup.tokenizer, weights, setup.precision)
        plan = engine.plan(requests)
        losses = target_token_losses(engine, requests, examples, settings.generation_batch_size, setup.cache, plan,
                                     progress, f"loss: {system}")
        row = {"system": system, "notes": len(rows), "target_loss": round(sum(l for l, _ in losses) / sum(t for _, t in losses), 5)}
        if generate_text:
            generated = scored_generate(engine, requests, settings.max_source_tokens, settings.max_target_tokens,
                                        settings.generation_batch_size, progress, f"summaries: {system}", setup.cache, plan)
            row["rouge_l"] = round(float(np.mean([rouge_l(g.text, part.targets[i]) for g, i in zip(generated, rows)])), 4)
        table.append(row)
    return table


def safety_thresholds(router: Router, setup: RoutingSetup, split: str = "val", progress: bool = True) -> dict:
    """The served bundle's safety thresholds (tasks/serve/safety.py), set on up to `serve.calibration_requests`
    of the split's requests answered by the router's mix, with the budgets serving gives them."""
    params, part = setup.params, setup.requests[split]
    rows = list(range(len(part.requests)))
    limit = params.serve.calibration_requests
    if len(rows) > limit:
        rows = sorted(random.Random(params.seed).sample(rows, limit))
    if not rows:
        return calibrate([], params.evaluate.flag_share).to_dict()
    _, weights = router.route(setup.features[split][rows])
    weights = setup.weights_over_mixture(weights)
    outputs = []
    for is_question in (False, True):
        chosen = [k for k, i in enumerate(rows) if part.requests[i].is_question == is_question]
        if not chosen:
            continue
        requests = [part.requests[rows[k]] for k in chosen]
        new_tokens = max(params.finetune.for_expert(part.groups[rows[k]]).max_target_tokens if is_question
                         else params.finetune.max_target_tokens for k in chosen)
        source_tokens = setup.settings["question_tokens" if is_question else "note_tokens"]
        engine = setup.mixture.engine(setup.tokenizer, weights[chosen], setup.precision)
        for g in scored_generate(engine, requests, source_tokens, new_tokens, params.finetune.generation_batch_size, progress,
                                 "safety calibration", setup.cache):
            outputs.append((True, g.decision.entropy, g.decision.energy) if is_question else (False, g.token_entropy, g.energy))
    return calibrate(outputs, params.evaluate.flag_share).to_dict()


def compose_experts(setup: RoutingSetup, output_dir: Path, progress: bool = True) -> list[dict]:
    """For each specialty in route.compose.specialties: search a mix of every adapter on `examples` of its
    training notes, merge it into a PEFT adapter under output_dir/<name>, and score it on its held-out
    notes against the base model and the uniform mix of the same adapters."""
    params, settings = setup.params, setup.params.route.compose
    results = []
    for name in settings.specialties:
        train_rows = setup.requests["train"].indices(name)
        test_rows = setup.requests["test"].indices(name)
        if not train_rows or not test_rows:
            results.append({"expert": name, "skipped": f"needs training and held-out notes; has {len(train_rows)} and {len(test_rows)}"})
            continue
        shots = sorted(random.Random(params.seed).sample(train_rows, min(settings.examples, len(train_rows))))
        shot_scorer = _scorer(setup, "train", shots)
        everything = list(range(len(shots)))
        composition = compose(name, setup.mixture.names,
                              lambda w: shot_scorer.mean_loss(everything, torch.tensor(w, dtype=torch.float)),
                              settings.budget, settings.l1, settings.bound, progress)
        test_scorer = _scorer(setup, "test", test_rows)
        held_out = list(range(len(test_rows)))
        count = len(setup.mixture.names)
        scores = {"base model": torch.zeros(count), "uniform mixture": torch.full((count,), 1.0 / count),
                  "composed": torch.tensor(composition.weights)}
        rows = [{"system": system, "target_loss": round(test_scorer.mean_loss(held_out, weights), 5)} for system, weights in scores.items()]
        used = [(expert, w) for expert, w in zip(setup.mixture.experts, composition.weights) if w != 0]
        state, config = merged_adapter_state([e for e, _ in used], [w for _, w in used])
        save_adapter(state, config, output_dir / name)
        record = {"expert": name, "examples": len(shots), "held_out_notes": len(test_rows), **asdict(composition), "held_out": rows}
        (output_dir / name / "composition.json").write_text(json.dumps(record, indent=2))
        results.append(record)
    return results


def _scorer(setup: RoutingSetup, split: str, rows: list[int]) -> MixtureLoss:
    part = setup.requests[split]
    chosen = LabelledRequests([part.requests[i] for i in rows], [part.targets[i] for i in rows],
                              [part.labels[i] for i in rows], [part.groups[i] for i in rows])
    return MixtureLoss(setup.mixture, tokenized_examples(setup.params, setup.tokenizer, chosen), setup.tokenizer.pad_token_id,
                       setup.params.finetune.generation_batch_size, setup.precision)


def read_notes(root: Path, validated_dir: Path) -> dict[str, pd.DataFrame]:
    return {split: pd.read_parquet(root / validated_dir / f"{split}.parquet") for split in SPLITS}
