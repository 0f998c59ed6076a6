"""The requests a router learns from and is scored on: notes labelled with their expert group, and
each task expert's questions labelled with the task."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tasks.finetune.examples import Request, TokenizedExample, tokenize_example
from tasks.finetune.expert_data import expert_records, note_pairs
from tasks.params import Params
from tasks.route.strategies import NO_LABEL

SPLITS = ("train", "val", "test")


@dataclass
class LabelledRequests:
    requests: list[Request] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)       # index into the routed experts, NO_LABEL if none
    groups: list[str] = field(default_factory=list)       # the expert group (or task) each request came from

    def add(self, pairs: list[tuple[Request, str]], group: str, label: int) -> None:
        for request, target in pairs:
            self.requests.append(request)
            self.targets.append(target)
            self.labels.append(label)
            self.groups.append(group)

    def indices(self, group: str) -> list[int]:
        return [i for i, g in enumerate(self.groups) if g == group]


def routed_experts(params: Params, adapters_dir: Path) -> list[str]:
    """The experts a router chooses among: each specialty and task expert that has a trained adapter."""
    return [e for e in [*params.experts, *params.finetune.task_experts] if (adapters_dir / e / "adapter_config.json").exists()]


def labelled_requests(params: Params, root: Path, notes: dict[str, pd.DataFrame], experts: list[str]) -> dict[str, LabelledRequests]:
    """Per split: the notes of every group (composed groups unlabelled) and the questions of every routed task expert."""
    parts = {split: LabelledRequests() for split in notes}
    for split, frame in notes.items():
        for group in params.note_groups():
            parts[split].add(note_pairs(frame[frame["expert"] == group]), group, experts.index(group) if group in experts else NO_LABEL)
    for task in params.finetune.task_experts:
        if task in experts:
            for split, pairs in expert_records(params, task, {s: None for s in notes}, root).items():
                parts[split].add(pairs, task, experts.index(task))
    return parts


def feature_settings(params: Params) -> dict:
    """How the router's features are computed: the layer, and prompts cut as the experts were trained
    (questions with the first task expert's budget)."""
    tasks = list(params.finetune.task_experts)
    question_tokens = params.finetune.for_expert(tasks[0]).max_source_tokens if tasks else params.finetune.max_source_tokens
    return {"layer": params.route.layer, "lexical_buckets": params.route.lexical_buckets,
            "note_tokens": params.finetune.max_source_tokens, "question_tokens": question_tokens}


def tokenized_examples(params: Params, tokenizer, requests: LabelledRequests) -> list[TokenizedExample]:
    """Each request with its target, tokenized as its own expert was trained (a task's questions with that task's settings)."""
    examples = []
    for request, target, group in zip(requests.requests, requests.targets, requests.groups):
        settings = params.finetune.for_expert(group) if group in params.finetune.task_experts else params.finetune
        examples.append(tokenize_example(tokenizer, request, target, settings.max_source_tokens, settings.max_target_tokens))
    return examples
