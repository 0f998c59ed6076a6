"""The augment stage's work as plain functions: which experts are rare, their synthetic candidates, the screens, and
the training set the finetune stage reads (real training notes plus the accepted synthetic examples)."""

from __future__ import annotations

import functools
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from tasks.augment import filters, methods
from tasks.finetune.expert_data import REAL_ORIGIN
from tasks.params import Params

SYNTHETIC_ID_PREFIX = "syn-"


@dataclass
class AugmentResult:
    train: pd.DataFrame                 # real training notes and accepted synthetic examples, with provenance
    rejected: pd.DataFrame              # provenance and reason of each rejected candidate (never its text)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # expert -> real, candidates, reasons, accepted
    generator: str = ""
    generator_version: str = ""


def rare_experts(params: Params, train: pd.DataFrame) -> dict[str, int]:
    """{expert: real training notes} for the specialty experts with fewer than augment.min_train_notes (and some)."""
    counts = train["expert"].value_counts()
    return {e: int(counts.get(e, 0)) for e in params.experts if 0 < counts.get(e, 0) < params.augment.min_train_notes}


def with_provenance(real: pd.DataFrame) -> pd.DataFrame:
    return real.assign(origin=REAL_ORIGIN, method=REAL_ORIGIN, generator="", generator_version="", prompt_id="", seed=-1,
                       source_note_id=real["note_id"])


def base_perplexity(params: Params, root: Path, device: torch.device | None, engine=None):
    """A function: texts -> perplexity of each under the base model (its first augment.note_tokens tokens). The
    base model is `engine`'s when given (the generator, when it is the base model), else loaded at the first call."""
    from tasks.base_model import load_base
    from tasks.finetune.examples import IGNORE_INDEX, TokenizedExample
    from tasks.finetune.inference import AdapterEngine, target_token_losses

    @functools.cache
    def base_engine():
        if engine is not None:
            return engine
        tokenizer, model = load_base(params.base_model, root, device)
        return AdapterEngine(model, tokenizer, precision=params.finetune.precision)

    def perplexity(texts: list[str]) -> list[float]:
        base = base_engine()
        start = base.tokenizer.bos_token_id if base.tokenizer.bos_token_id is not None else base.tokenizer.eos_token_id
        ids = [base.tokenizer(t, add_special_tokens=False)["input_ids"][: params.augment.note_tokens] for t in texts]
        examples = [TokenizedExample([start, *i], [IGNORE_INDEX, *i]) for i in ids]
        losses = target_token_losses(base, [None] * len(examples), examples, params.finetune.generation_batch_size)
        return [math.exp(loss / count) if count else math.inf for loss, count in losses]

    return perplexity


def candidates_for(expert: str, train: pd.DataFrame, sources: pd.DataFrame, params: Params, generator,
                   seed: int) -> pd.DataFrame:
    """The expert's candidates. Methods that keep a real note's words start from `sources` (the training notes
    clear of every held-out note: a variant of one that is not would be rejected anyway); few-shot prompts show
    them too, while there are enough."""
    settings, rows = params.augment, []
    shown = sources if len(sources) >= settings.shots else train
    for method in settings.methods:
        if method == "fewshot_notes" and settings.notes_per_expert:
            rows += methods.fewshot_notes(generator, expert, shown, settings, params.finetune, seed)
        elif method == "back_summaries" and len(sources):
            rows += methods.back_summaries(generator, expert, sources, settings, params.finetune, seed + 1)
        elif method in ("section_reorder", "abbreviations"):
            rows += methods.rule_variants(expert, sources, method, seed + 2)
    return pd.DataFrame(rows, columns=methods.CANDIDATE_COLUMNS)


def synthetic_ids(frame: pd.DataFrame) -> list[str]:
    """Stable ids for synthetic examples (a hash of provenance and text), unlike any pseudonymous note id."""
    return [f"{SYNTHETIC_ID_PREFIX}{zlib.crc32(f'{p}|{s}|{t}|{g}'.encode()):08x}"
            for p, s, t, g in zip(frame["prompt_id"], frame["seed"], frame["text"], frame["target"])]


def augment(params: Params, root: Path, splits: dict[str, pd.DataFrame], canaries: list[str],
            device: torch.device | None = None, log=print) -> AugmentResult:
    device = device or torch.device("cpu")
    real = with_provenance(splits["train"])
    rare = rare_experts(params, splits["train"]) if params.augment.methods else {}
    if not rare:
        log(f"augment: no expert has fewer than augment.min_train_notes={params.augment.min_train_notes} training notes")
        return AugmentResult(real, pd.DataFrame(columns=[*methods.PROVENANCE_COLUMNS, "expert", "reason"]))
    needs_model = any(m in ("fewshot_notes", "back_summaries") for m in params.augment.methods)
    generator = None
    if needs_model:
        from tasks.augment.generator import load_generator

        generator = load_generator(params, root, device)
        log(f"augment: {', '.join(f'{e} ({n} notes)' for e, n in rare.items())} augmented by {generator.name}")
    is_base = generator is not None and generator.name == f"base:{params.base_model}"
    perplexity = base_perplexity(params, root, device, generator.engine if is_base else None)
    heldout = filters.HeldOut([t for split in ("val", "test") for t in splits[split]["text"]], params.augment, params.seed)
    accepted, rejected, counts = [], [], {}
    for expert in rare:
        own = splits["train"][splits["train"]["expert"] == expert]
        sources = own[[not near for near in heldout.near(list(own["text"]))]]
        seed = params.seed + zlib.crc32(expert.encode()) % 100_000
        candidates = candidates_for(expert, own, sources, params, generator, seed)
        kept, refused = filters.screen(candidates, own, heldout, params.augment, params.validate_, canaries, perplexity, seed)
        accepted.append(kept)
        rejected.append(refused.drop(columns=["text", "target", *methods.SURROGATE_COLUMNS]))
        counts[expert] = {"real": len(own), "sources_near_heldout": len(own) - len(sources),
                          "candidates": len(candidates), "accepted": len(kept),
                          **{f"rejected_{r}": int((refused["reason"] == r).sum()) for r in filters.REASONS},
                          **{f"accepted_{m}": int((kept["method"] == m).sum()) for m in params.augment.methods}}
    synthetic = pd.concat(accepted, ignore_index=True)
    synthetic = synthetic.assign(note_id=synthetic_ids(synthetic), patient_id=[f"synthetic-{e}" for e in synthetic["expert"]],
                                 source_row=-1, phi_replaced=0, duplicate_cluster=-1)
    train = pd.concat([real, synthetic[[c for c in real.columns if c in synthetic.columns]]], ignore_index=True)
    return AugmentResult(train, pd.concat(rejected, ignore_index=True), counts,
                         generator.name if generator else "rule", generator.version if generator else "")
