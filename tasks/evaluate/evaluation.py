"""Score one system on held-out notes and questions: metrics, safety signals, flags, adversarial robustness,
and the sample of its outputs that people review."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.evaluate.adversarial import perturb
from tasks.evaluate.clinical_terms import critical_errors
from tasks.evaluate.metrics import accuracy, expected_calibration_error, macro_f1, perplexity, rouge_l, separation_auroc
from tasks.finetune.inference import Engine, InferenceCache, scored_generate, target_token_losses
from tasks.finetune.examples import ANSWERS, Request, answer_of, tokenize_example
from tasks.finetune.pubmedqa import read_pubmedqa, split_pubmedqa
from tasks.params import MULTITASK_EXPERT, Params
from tasks.serve.safety import calibrate

ALL_REQUESTS = "all"


@dataclass(frozen=True)
class HeldOutItem:
    id: str
    group: str          # the expert group of a note, or the task expert of a question
    request: Request
    target: str

    @property
    def is_question(self) -> bool:
        return self.request.is_question

    @property
    def source(self) -> str:
        return self.request.source

    @property
    def shown_input(self) -> str:
        return f"Question: {self.request.question}\n\nContext: {self.request.context}" if self.is_question else self.request.text


@dataclass
class ScoredItem:
    text: str
    entropy: float            # notes: mean over the generated tokens; questions: where the decision is read
    energy: float
    seconds: float
    loss: float | None
    tokens: int
    critical_errors: list[str]
    answer: str | None = None
    confidence: float | None = None
    answer_entropy: float | None = None
    answer_margin: float | None = None
    flags: list[str] = field(default_factory=list)


def held_out_items(params: Params, root: Path, test_notes: pd.DataFrame) -> list[HeldOutItem]:
    """The test split's notes of every group and each task expert's held-out questions, capped as configured."""
    rng = random.Random(params.seed)
    notes = [HeldOutItem(str(row.note_id), row.expert, Request(text=row.text), row.target) for row in test_notes.itertuples()]
    if params.evaluate.notes and len(notes) > params.evaluate.notes:
        notes = [notes[i] for i in sorted(rng.sample(range(len(notes)), params.evaluate.notes))]
    questions = []
    for task, settings in params.finetune.task_experts.items():
        path = root / settings.path
        if not path.exists():
            continue
        items = split_pubmedqa(read_pubmedqa(path), params.seed, settings.holdout, settings.val)["test"]
        if params.evaluate.questions and len(items) > params.evaluate.questions:
            items = [items[i] for i in sorted(rng.sample(range(len(items)), params.evaluate.questions))]
        questions += [HeldOutItem(f"{task}-{item.pmid}", task, item.request, item.target) for item in items]
    return notes + questions


def in_scope(item: HeldOutItem, scope: str) -> bool:
    """`all`: every request (the router); the multi-task expert: every note; an expert: its own group's requests."""
    if scope == ALL_REQUESTS:
        return True
    if scope == MULTITASK_EXPERT:
        return not item.is_question
    return item.group == scope


def _budgets(params: Params, item: HeldOutItem) -> tuple[int, int]:
    settings = params.finetune.for_expert(item.group) if item.is_question else params.finetune
    return settings.max_source_tokens, settings.max_target_tokens


def score_items(engine: Engine, items: list[HeldOutItem], params: Params, with_losses: bool = True,
                progress: bool = False, label: str = "", cache: InferenceCache | None = None) -> list[ScoredItem]:
    """Generate for every item (grouped by prompt budget), read questions' decisions, and score targets;
    what `cache` holds for the same weights, precision, budget and tokens is re-used, not recomputed."""
    scored: list[ScoredItem | None] = [None] * len(items)
    batch_size = params.finetune.generation_batch_size
    by_budget: dict[tuple[int, int], list[int]] = {}
    for index, item in enumerate(items):
        by_budget.setdefault(_budgets(params, item), []).append(index)
    for (source_tokens, new_tokens), rows in by_budget.items():
        requests = [items[i].request for i in rows]
        plan = engine.plan(requests)  # once: a router routes the requests here
        texts = scored_generate(engine, requests, source_tokens, new_tokens, batch_size, progress, f"{label} outputs".strip(),
                                cache, plan)
        losses = [(None, 0)] * len(rows)
        if with_losses:
            examples = [tokenize_example(engine.tokenizer, items[i].request, items[i].target, source_tokens, new_tokens) for i in rows]
            losses = target_token_losses(engine, requests, examples, batch_size, cache, plan)
        answers = {k: texts[k].decision for k, i in enumerate(rows) if items[i].is_question}
        for k, index in enumerate(rows):
            item, generated = items[index], texts[k]
            errors = [f"{e.kind.replace('_', ' ')}: {e.term}" for e in critical_errors(item.source, generated.text)]
            record = ScoredItem(generated.text, generated.token_entropy, generated.energy, generated.seconds,
                                losses[k][0], losses[k][1], errors)
            if k in answers:
                answer = answers[k]
                record.answer, record.confidence = answer.answer, max(answer.probabilities.values())
                record.entropy, record.energy, record.answer_entropy = answer.entropy, answer.energy, answer.answer_entropy
                record.answer_margin = answer.margin
            scored[index] = record
    return scored


def summarise(items: list[HeldOutItem], scored: list[ScoredItem], bins: int = 10) -> dict[str, float]:
    """The candidate's metrics on these items: ROUGE-L and the critical error rate of summaries; accuracy,
    macro-F1 and ECE of decisions; perplexity of the references; latency."""
    metrics: dict[str, float] = {"requests": len(items)}
    notes = [(i, s) for i, s in zip(items, scored) if not i.is_question]
    questions = [(i, s) for i, s in zip(items, scored) if i.is_question]
    if notes:
        metrics["notes"] = len(notes)
        metrics["rouge_l"] = float(np.mean([rouge_l(s.text, i.target) for i, s in notes]))
    if questions:
        labels = [answer_of(i.target) for i, _ in questions]
        predicted = [s.answer for _, s in questions]
        metrics["questions"] = len(questions)
        metrics["accuracy"] = accuracy(predicted, labels)
        metrics["macro_f1"] = macro_f1(predicted, labels, ANSWERS)
        metrics["ece"] = expected_calibration_error([s.confidence for _, s in questions],
                                                    [p == y for p, y in zip(predicted, labels)], bins)
    metrics["critical_error_rate"] = float(np.mean([bool(s.critical_errors) for s in scored])) if scored else 0.0
    if all(s.loss is not None for s in scored) and scored:
        metrics["perplexity"] = perplexity([s.loss for s in scored], [s.tokens for s in scored])
    latencies = [1000 * s.seconds for s in scored]
    if latencies:
        metrics["latency_ms"] = float(np.mean(latencies))
        metrics["latency_ms_p95"] = float(np.percentile(latencies, 95))
    return {k: round(v, 5) if isinstance(v, float) else v for k, v in metrics.items()}


def flag_outputs(items: list[HeldOutItem], scored: list[ScoredItem], share: float) -> None:
    """Flag critical errors, and outputs in the top `share` of entropy or energy among their kind (notes and
    questions have different scales): the thresholds serving sets on validation, set here on these outputs."""
    thresholds = calibrate([(item.is_question, s.entropy, s.energy) for item, s in zip(items, scored)], share)
    for item, record in zip(items, scored):
        record.flags = [f"critical error, {error}" for error in record.critical_errors]
        for signal, threshold in (thresholds.questions if item.is_question else thresholds.notes).items():
            value = getattr(record, signal)
            if value >= threshold:
                record.flags.append(f"high {signal} ({value:.2f}; top {share:.0%} of this candidate's outputs)")


def safety_separation(items: list[HeldOutItem], scored: list[ScoredItem]) -> dict:
    """On questions, where correctness is known: AUROC of each signal for picking out wrong decisions."""
    rows = [k for k, item in enumerate(items) if item.is_question]
    if not rows:
        return {}
    wrong = [scored[k].answer != answer_of(items[k].target) for k in rows]
    signals = {"token_entropy": [scored[k].entropy for k in rows], "energy": [scored[k].energy for k in rows],
               "answer_entropy": [scored[k].answer_entropy for k in rows],
               "negative_answer_margin": [-scored[k].answer_margin for k in rows],  # a narrow margin: likely wrong
               "unsupported_entities": [sum(e.startswith("unsupported") for e in scored[k].critical_errors) for k in rows]}
    result = {"questions": len(rows), "wrong": sum(wrong)}
    for name, values in signals.items():
        auroc = separation_auroc(values, wrong)
        result[f"auroc_{name}"] = None if auroc is None else round(auroc, 4)
    return result


def perturbed_item(item: HeldOutItem, kind: str, seed: int) -> HeldOutItem | None:
    """The item with its input perturbed; None where the perturbation does not apply (a flipped negation in a
    question's abstract would change its correct answer)."""
    request = item.request
    if item.is_question:
        if kind == "negation_flip":
            return None
        question = perturb(request.question, kind, seed) if kind == "upper_case" else request.question
        return HeldOutItem(item.id, item.group, Request(question=question, context=perturb(request.context, kind, seed)), item.target)
    return HeldOutItem(item.id, item.group, Request(text=perturb(request.text, kind, seed)), item.target)


def robustness(engine: Engine, items: list[HeldOutItem], clean: list[ScoredItem], params: Params,
               progress: bool = False, cache: InferenceCache | None = None) -> list[dict]:
    """Per perturbation, on a sample of the items: the metrics on perturbed inputs beside the same items' clean
    metrics (critical errors are judged against the perturbed source)."""
    settings = params.evaluate
    if not settings.adversarial_requests or not items:
        return []
    rng = random.Random(params.seed)
    sample = sorted(rng.sample(range(len(items)), min(settings.adversarial_requests, len(items))))
    rows = []
    for kind in settings.perturbations:
        pairs = [(k, perturbed_item(items[k], kind, params.seed + k)) for k in sample]
        pairs = [(k, p) for k, p in pairs if p is not None]
        if not pairs:
            continue
        perturbed = [p for _, p in pairs]
        scored = score_items(engine, perturbed, params, with_losses=False, progress=progress, label=kind, cache=cache)
        before = summarise([items[k] for k, _ in pairs], [clean[k] for k, _ in pairs])
        after = summarise(perturbed, scored)
        row = {"perturbation": kind, "requests": len(pairs)}
        for metric in ("rouge_l", "accuracy", "critical_error_rate"):
            if metric in after:
                row[f"{metric}_clean"], row[metric] = before[metric], after[metric]
        rows.append(row)
    return rows


def review_sample(items: list[HeldOutItem], scored: list[ScoredItem], count: int, seed: int) -> list[tuple[int, str]]:
    """(item index, how it was sampled): flagged outputs first, the most flagged and least sure first, then random."""
    flagged = sorted((k for k, s in enumerate(scored) if s.flags), key=lambda k: (-len(scored[k].flags), -scored[k].entropy))
    chosen = [(k, "flagged") for k in flagged[:count]]
    rest = [k for k in range(len(items)) if k not in set(flagged[:count])]
    random.Random(seed).shuffle(rest)
    return chosen + [(k, "random") for k in rest[: count - len(chosen)]]
