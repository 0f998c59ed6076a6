"""The distil stage's work as plain functions: the routed bundle (base, router, experts) is the teacher; the student
starts as a depth-pruned copy of the base model and learns from the teacher's generations (hard targets), its cached
top-k distributions (soft targets) and the gold targets; a supervised-only student of the same size and start is the
baseline. Student, baseline, teacher and base model are then scored side by side on held-out data, and their
generation speed measured with the serving code on one batch."""

from __future__ import annotations

import copy
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch

from tasks.base_model import load_base, pick_device
from tasks.distil.student import (block_influence, choose_layers, parameter_count, pruned_copy, with_adapter_merged)
from tasks.distil.train import GOLD, TEACHER, DistilExample, StudentReport, train_student
from tasks.evaluate.evaluation import HeldOutItem, held_out_items, score_items, summarise
from tasks.finetune.examples import Request, tokenize_example
from tasks.finetune.inference import (AdapterEngine, InferenceCache, TopKCache, mixture_identity, target_top_k,
                                      weights_fingerprint)
from tasks.finetune.precision import resolve_precision
from tasks.finetune.train import evaluate_loss, peak_memory_mb, reset_peak_memory
from tasks.layout import ADAPTERS_DIR, AUGMENTED_DIR, VALIDATED_DIR
from tasks.params import MULTITASK_EXPERT, Params
from tasks.register.bundle_registry import served_budgets
from tasks.route.mixing import load_expert_factors, merged_adapter_state
from tasks.route.requests import labelled_requests, routed_experts
from tasks.route.serve import RoutedSystem
from tasks.route.stage import ROUTER_MODEL_DIR
from tasks.serve.engine import Ask, DenseSystem, ServedSystem
from tasks.serve.safety import SafetyThresholds, calibrate

STUDENT_DIR = Path("models/student")
STUDENT_MODEL_DIR = STUDENT_DIR / "model"
REPORT_FILE = "distillation.json"
SUPERVISED_ONLY = {"hard": 0.0, "soft": 0.0, "supervised": 1.0}


@dataclass
class Pair:
    request: Request
    target: str
    group: str


def training_pairs(params: Params, root: Path, experts: list[str]) -> dict[str, list[Pair]]:
    """The de-identified training notes (with the augment stage's synthetic ones) and validation notes of every group,
    and each routed task expert's questions."""
    notes = {"train": pd.read_parquet(root / AUGMENTED_DIR / "train.parquet"),
             "val": pd.read_parquet(root / VALIDATED_DIR / "val.parquet")}
    parts = labelled_requests(params, root, notes, experts)
    return {split: [Pair(r, t, g) for r, t, g in zip(part.requests, part.targets, part.groups)] for split, part in parts.items()}


def budgets(params: Params, group: str) -> tuple[int, int]:
    """Prompt and target tokens as the group's expert was trained."""
    settings = params.finetune.for_expert(group) if group in params.finetune.task_experts else params.finetune
    return settings.max_source_tokens, settings.max_target_tokens


def tokenized(params: Params, tokenizer, pairs: list[Pair], targets: list[str] | None = None) -> list:
    return [tokenize_example(tokenizer, p.request, target, *budgets(params, p.group))
            for p, target in zip(pairs, targets or [p.target for p in pairs])]


def sample(items: list, count: int, seed: int) -> list:
    return items if not count or len(items) <= count else [items[i] for i in sorted(random.Random(seed).sample(range(len(items)), count))]


def teacher_generations(teacher, params: Params, pairs: list[Pair], cache: InferenceCache | None, progress: bool) -> list[str]:
    """The teacher's greedy answer to each prompt, grouped by prompt budget as evaluation groups them."""
    items = [HeldOutItem(str(k), p.group, p.request, p.target) for k, p in enumerate(pairs)]
    return [s.text for s in score_items(teacher, items, params, with_losses=False, progress=progress, label="teacher",
                                        cache=cache)]


def student_start(params: Params, base, tokenizer, train: list, val: list, device, precision: str,
                  adapters: dict[str, Path], experts: list[str]) -> tuple[torch.nn.Module, dict]:
    """The student before training, and how it was made: a configured model, or the base's chosen layers, with
    the adapter mix (none, the multi-task adapter, a uniform mix of the routed experts) merged in that gives the
    lowest validation loss when `merge` is auto."""
    settings = params.distil
    if settings.student != "pruned":
        from transformers import AutoModelForCausalLM

        from tasks.base_model import load_tokenizer

        if load_tokenizer(settings.student).get_vocab() != tokenizer.get_vocab():
            raise ValueError(f"distil.student {settings.student!r} has another tokenizer than the base model; "
                             "a student must read the teacher's tokens")
        student = AutoModelForCausalLM.from_pretrained(settings.student, dtype=torch.float32).to(device)
        return student, {"student": settings.student}
    depth = len(base.model.layers)
    influence = (block_influence(base, train[:32], tokenizer.pad_token_id) if settings.layer_choice == "influence"
                 and not isinstance(settings.keep_layers, list) else None)
    keep = choose_layers(depth, settings.keep_layers, settings.layer_choice, influence)
    candidates = {"none": None}
    if settings.merge in ("auto", "multitask"):
        if MULTITASK_EXPERT in adapters:
            candidates["multitask"] = merged_adapter_state([load_expert_factors(adapters[MULTITASK_EXPERT], MULTITASK_EXPERT)], [1.0])
        elif settings.merge == "multitask":
            raise ValueError("distil.merge is multitask, but no multi-task adapter was trained (finetune.multitask_expert)")
    if settings.merge in ("auto", "uniform"):
        factors = [load_expert_factors(adapters[e], e) for e in experts]
        candidates["uniform"] = merged_adapter_state(factors, [1.0 / len(factors)] * len(factors))
    if settings.merge != "auto":
        candidates = {settings.merge: candidates[settings.merge]}
    losses, best, chosen = {}, None, None
    for name, adapter in candidates.items():
        start = pruned_copy(with_adapter_merged(base, *adapter) if adapter else base, keep)
        if len(candidates) > 1:
            losses[name] = round(evaluate_loss(start, val, settings.batch_size, tokenizer.pad_token_id, device, precision), 5)
        if best is None or losses[name] < losses[chosen]:
            best, chosen = start, name
    how = {"student": "pruned", "depth": depth, "kept_layers": keep, "merged": chosen, "start_val_loss": losses}
    if influence is not None:
        how["block_influence"] = [round(value, 5) for value in influence]
    return best, how


def measure_speed(served: ServedSystem, requests: list[Request], tokens: int) -> dict:
    """Tokens per second of one batch through the serving code, each row generating exactly `tokens`, and the memory
    it needs: its weights, plus how far the process's peak rose above what it held before, while it generated."""
    device = pick_device("auto")
    asks = lambda budget: [Ask(r, max_new_tokens=budget, ignore_eos=True) for r in requests]  # noqa: E731
    served.answer(asks(2))  # warm-up: first-call allocations and kernel choices stay out of the timing
    reset_peak_memory(device)
    # what is held before it runs: just reset, the peak is the current resident size (allocated, on a GPU)
    resident = torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else peak_memory_mb(device)
    started = time.perf_counter()
    answers = served.answer(asks(tokens))
    seconds = time.perf_counter() - started
    generated = sum(a.completion_tokens for a in answers)
    weights = sum(p.numel() * p.element_size() for p in {id(p): p for p in served.system.model.parameters()}.values())
    extra = max(peak_memory_mb(device) - resident, 0.0)
    return {"tokens_per_s": round(generated / seconds, 2), "speed_batch": len(requests), "speed_tokens": tokens,
            "weights_mb": round(weights / 2**20, 1), "peak_memory_mb": round(weights / 2**20 + extra, 1)}


def score(engine, items: list[HeldOutItem], params: Params, cache: InferenceCache | None, label: str, progress: bool) -> dict:
    metrics = summarise(items, score_items(engine, items, params, progress=progress, label=label, cache=cache),
                        params.evaluate.calibration_bins)
    return {k: metrics[k] for k in ("rouge_l", "accuracy", "perplexity") if k in metrics}


def student_safety(student: DenseSystem, val: list[Pair], params: Params, cache: InferenceCache | None) -> dict:
    """The student's serving thresholds, set on its own outputs for the validation examples it was chosen on (at most
    `serve.calibration_requests`), as the route stage sets the bundle's."""
    items = [HeldOutItem(str(k), p.group, p.request, p.target) for k, p in
             enumerate(sample(val, params.serve.calibration_requests, params.seed))]
    scored = score_items(student, items, params, with_losses=False, cache=cache) if items else []
    return calibrate([(i.is_question, s.entropy, s.energy) for i, s in zip(items, scored)], params.evaluate.flag_share).to_dict()


def distil(params: Params, root: Path, progress: bool = True) -> dict:
    """Train the student (and the supervised-only baseline), save the student under models/student/model, and return
    the stage's report: how the student was made, each training, the held-out table, speeds and the cache's size."""
    settings = params.distil
    device = pick_device(params.finetune.device)
    precision = resolve_precision(params.finetune.precision, device)
    adapters_dir = root / ADAPTERS_DIR
    experts = routed_experts(params, adapters_dir)
    if not experts:
        raise FileNotFoundError(f"{adapters_dir}: no trained experts, so no teacher; run the finetune and route stages first")
    adapters = {e: adapters_dir / e for e in [*experts, MULTITASK_EXPERT] if (adapters_dir / e / "adapter_config.json").exists()}
    teacher = RoutedSystem(params.base_model, root / ROUTER_MODEL_DIR, adapters, root, params.finetune.precision)
    tokenizer = teacher.tokenizer
    cache, top_k_cache = InferenceCache.for_project(root), TopKCache.for_project(root)
    pairs = training_pairs(params, root, experts)
    gold_pairs = sample(pairs["train"], settings.examples, params.seed)
    gold = tokenized(params, tokenizer, gold_pairs)
    val_pairs = sample(pairs["val"], settings.val_examples, params.seed)
    val = tokenized(params, tokenizer, val_pairs)

    train: list[DistilExample] = [DistilExample(e, GOLD) for e in gold]
    top_k: list[dict] = []
    if settings.loss_weights.soft:
        top_k = target_top_k(teacher, [p.request for p in gold_pairs], gold, settings.top_k,
                             params.finetune.generation_batch_size, top_k_cache, progress=progress)
        for example, logits in zip(train, top_k):
            example.top_k = logits
    hard_pairs = sample(gold_pairs, settings.hard_prompts, params.seed + 1) if settings.loss_weights.hard else []
    if hard_pairs:
        answers = teacher_generations(teacher, params, hard_pairs, cache, progress)
        train += [DistilExample(e, TEACHER) for e in tokenized(params, tokenizer, hard_pairs, answers)]

    _, base = load_base(params.base_model, root, device)
    base.requires_grad_(False)
    start, how = student_start(params, base, tokenizer, gold, val, device, precision, adapters, experts)
    trainings: list[StudentReport] = []
    students = {}
    runs = [("student", settings.loss_weights.model_dump())] + ([("supervised-only student", SUPERVISED_ONLY)] if settings.baseline else [])
    for name, weights in runs:
        model = copy.deepcopy(start)
        trainings.append(train_student(name, model, train, val, weights, settings, tokenizer.pad_token_id, params.seed,
                                       device, precision, progress))
        students[name] = DenseSystem(model, tokenizer, params.finetune.precision)
    del start

    student = students["student"]
    student.model.save_pretrained(root / STUDENT_MODEL_DIR)
    tokenizer.save_pretrained(root / STUDENT_MODEL_DIR)

    items = held_out_items(params, root, pd.read_parquet(root / VALIDATED_DIR / "test.parquet"))
    base_engine = AdapterEngine(base, tokenizer, mixture_identity(weights_fingerprint(base), []), params.finetune.precision)
    systems = {**students, "teacher (routed bundle)": teacher, "base model": base_engine}
    budget = served_budgets(params, list(adapters))
    served = {**{name: ServedSystem(system, SafetyThresholds(), budget) for name, system in students.items()},
              "teacher (routed bundle)": ServedSystem(teacher, SafetyThresholds(), budget),
              "base model": ServedSystem(DenseSystem(base, tokenizer, params.finetune.precision), SafetyThresholds(), budget)}
    speed_requests = ([item.request for item in items if not item.is_question] or [item.request for item in items])[: settings.speed_requests]
    table = []
    for name, engine in systems.items():
        row = {"system": name, "parameters": parameter_count(engine.model)}
        row |= score(engine, items, params, cache, name, progress)
        if speed_requests:
            row |= measure_speed(served[name], speed_requests, settings.speed_tokens)
        table.append(row)
    by_name = {row["system"]: row for row in table}
    teacher_row, student_row = by_name["teacher (routed bundle)"], by_name["student"]
    kept = {f"kept_{metric}": round(student_row[metric] / teacher_row[metric], 4)
            for metric in ("rouge_l", "accuracy") if teacher_row.get(metric) and metric in student_row}
    speedup = round(student_row["tokens_per_s"] / teacher_row["tokens_per_s"], 3) if "tokens_per_s" in student_row else None
    return {"how": how, "trainings": [asdict(t) for t in trainings], "held_out": table, "held_out_requests": len(items),
            "teacher_share_kept": kept, "speedup_over_teacher": speedup,
            "cache": {"top_k": settings.top_k, "examples": len(top_k), "tokens": sum(len(t["values"]) for t in top_k),
                      "bytes": sum(t["indices"].nbytes + t["values"].nbytes for t in top_k), "file_bytes": top_k_cache.stored_bytes(),
                      "reused": top_k_cache.hits, "computed": top_k_cache.misses},
            "examples": {"gold": len(gold), "teacher": len(hard_pairs), "val": len(val)},
            "budgets": budget, "safety": student_safety(student, val_pairs, params, cache)}
