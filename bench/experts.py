"""Do the experts help? Held-out figures for the adapters a pipeline run trained.

Run after `medlora run` in a project whose input is MTSamples (see docs/BENCHMARKS.md):

    .venv/bin/python bench/experts.py --root PROJECT [--per-group 30] [--json experts.json]

- Summaries: ROUGE-L on the test split of data/validated, per specialty group, for the base model
  zero-shot (same prompt), the group's own expert, and the multi-task adapter trained on every group.
- PubMedQA: accuracy and macro-F1 on the task expert's held-out items, for the base model zero-shot
  and the expert, the answer read from the next-token likelihood of yes / no / maybe; beside them
  the share of the majority class.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from statistics import mean

import pandas as pd
import torch
from peft import PeftModel
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.layout import ADAPTERS_DIR, VALIDATED_DIR  # noqa: E402
from tasks.evaluate.metrics import accuracy, macro_f1, rouge_l  # noqa: E402
from tasks.base_model import load_base, pick_device  # noqa: E402
from tasks.finetune.examples import ANSWERS, Request, answer_of  # noqa: E402
from tasks.finetune.expert_data import expert_records  # noqa: E402
from tasks.finetune.inference import answer_probabilities, best_answer, generate  # noqa: E402
from tasks.finetune.precision import autocast, resolve_precision  # noqa: E402
from tasks.params import MULTITASK_EXPERT, load_params  # noqa: E402


def load_model(params, root: Path, device, adapter: str | None):
    tokenizer, base = load_base(params.base_model, root, device)
    if adapter is None:
        return tokenizer, base.eval()
    return tokenizer, PeftModel.from_pretrained(base, root / ADAPTERS_DIR / adapter).eval()


def summaries(params, root: Path, device, precision: str, adapter: str | None, notes: pd.DataFrame, label: str) -> list[str]:
    tokenizer, model = load_model(params, root, device, adapter)
    settings = params.finetune
    with autocast(device, precision):
        return generate(model, tokenizer, list(notes["request"]), settings.max_source_tokens, settings.max_target_tokens,
                        settings.generation_batch_size, progress=True, description=label)


def summary_table(params, root: Path, device, precision: str, per_group: int) -> list[dict]:
    test = pd.read_parquet(root / VALIDATED_DIR / "test.parquet")
    test = test[test["expert"].isin(list(params.experts))].sort_values("note_id")
    test = test.groupby("expert", sort=False).head(per_group).reset_index(drop=True)
    test["request"] = [Request(text=text) for text in test["text"]]
    scores = {}
    for system in ("base", MULTITASK_EXPERT):
        if system == MULTITASK_EXPERT and not (root / ADAPTERS_DIR / system).exists():
            continue
        predicted = summaries(params, root, device, precision, None if system == "base" else system, test, system)
        scores[system] = [rouge_l(p, t) for p, t in zip(predicted, test["target"])]
    scores["expert"] = [0.0] * len(test)
    for expert, rows in test.groupby("expert").groups.items():
        group = test.loc[rows]
        predicted = summaries(params, root, device, precision, expert, group, expert)
        for row, p, t in zip(rows, predicted, group["target"]):
            scores["expert"][row] = rouge_l(p, t)
    table = []
    for expert in params.experts:
        rows = test.index[test["expert"] == expert]
        if len(rows) == 0:
            continue
        table.append({"group": expert, "notes": len(rows),
                      **{system: round(mean(values[i] for i in rows), 4) for system, values in scores.items()}})
    return table


def question_scores(params, root: Path, device, precision: str, expert: str) -> dict:
    settings = params.finetune.for_expert(expert)
    held_out = expert_records(params, expert, {"test": None}, root)["test"]
    labels = [answer_of(target) for _, target in held_out]
    result = {"expert": expert, "items": len(labels), "majority_class": round(Counter(labels).most_common(1)[0][1] / len(labels), 4)}
    for system in ("base", expert):
        tokenizer, model = load_model(params, root, device, None if system == "base" else expert)
        with autocast(device, precision):
            answers = [best_answer(p) for p in answer_probabilities(model, tokenizer, [r for r, _ in held_out],
                                                                    settings.max_source_tokens, settings.generation_batch_size,
                                                                    progress=True)]
        name = "base" if system == "base" else "expert"
        result[f"{name}_accuracy"] = round(accuracy(answers, labels), 4)
        result[f"{name}_macro_f1"] = round(macro_f1(answers, labels, ANSWERS), 4)
        result[f"{name}_answers"] = dict(Counter(answers))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="project where `medlora run` trained the experts")
    parser.add_argument("--per-group", type=int, default=30, help="test notes per specialty group (the first by note id)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    root = args.root.resolve()
    params = load_params(root)
    device = pick_device(params.finetune.device)
    precision = resolve_precision(params.finetune.precision, device)
    torch.manual_seed(params.seed)

    figures = {"summaries": summary_table(params, root, device, precision, args.per_group), "questions": []}
    for expert in params.finetune.task_experts:
        if (root / ADAPTERS_DIR / expert).exists():
            figures["questions"].append(question_scores(params, root, device, precision, expert))

    console = Console()
    table = Table(title=f"ROUGE-L on held-out notes (up to {args.per_group} per group), {params.base_model}")
    columns = ["group", "notes", "base", "expert", MULTITASK_EXPERT]
    for column in columns:
        table.add_column(column, justify="left" if column == "group" else "right")
    for row in figures["summaries"]:
        table.add_row(*(str(row.get(c, "")) for c in columns))
    console.print(table)
    for result in figures["questions"]:
        console.print(f"{result['expert']}: {result['items']} held-out items, majority class {result['majority_class']}; "
                      f"base zero-shot accuracy {result['base_accuracy']} (macro-F1 {result['base_macro_f1']}), "
                      f"expert {result['expert_accuracy']} (macro-F1 {result['expert_macro_f1']}); "
                      f"answers: base {result['base_answers']}, expert {result['expert_answers']}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
