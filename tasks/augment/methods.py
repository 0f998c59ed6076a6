"""Ways to make synthetic (note, target) pairs for an expert from its de-identified training notes.

- fewshot_notes: the generator is shown `shots` training notes of the specialty and writes a new note (sampled);
  the generator then summarises it (greedy), as an expert would: the pair's target. Self-training on new inputs.
- back_summaries: a new, sampled summary of a real training note (the note stays real; only the target is new).
- section_reorder: a real note with its sections after the first in another order (no model).
- abbreviations: a real note with common clinical abbreviations written out, or written in where spelled out.

Each candidate carries its provenance: method, generator and version, prompt id (a hash of the prompt's template
and of the notes it showed), seed, and the real note it came from (its pseudonymous id) where there is one.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Sequence

import pandas as pd
import torch
from tqdm import tqdm

from tasks.augment.generator import Generator
from tasks.finetune.examples import Request, prompt_ids, truncate_head
from tasks.finetune.inference import BatchOptions, generate_batch, scored_generate
from tasks.params import AugmentParams, FinetuneParams
from tasks.validate.cleanse import ABBREVIATIONS, ABBREVIATION, SECTION_HEADER

NOTE_WRITER_SYSTEM_PROMPT = ("You write realistic clinical notes. Never use a real person's name, a real date, a phone "
                             "number or a record number.")
FEWSHOT_TEMPLATE = "fewshot-v1"
BACK_SUMMARY_TEMPLATE = "back-summary-v1"
PROVENANCE_COLUMNS = ["origin", "method", "generator", "generator_version", "prompt_id", "seed", "source_note_id"]
SURROGATE_COLUMNS = ["surrogate_ids", "surrogate_dates"]
CANDIDATE_COLUMNS = ["expert", "specialty", "text", "target", *SURROGATE_COLUMNS, *PROVENANCE_COLUMNS]


def prompt_id(template: str, *parts: str) -> str:
    return f"{template}:{hashlib.sha1('|'.join(parts).encode()).hexdigest()[:12]}"


def fewshot_request(specialty: str, shots: Sequence[str]) -> Request:
    examples = "\n\n".join(f"Example note {number}:\n{text}" for number, text in enumerate(shots, start=1))
    ask = f"Write one new {specialty} note about another patient, in the same style and with the same sections."
    return Request(messages=(("system", NOTE_WRITER_SYSTEM_PROMPT), ("user", f"{examples}\n\n{ask}")))


def _sampled(generator: Generator, prompts: list[list[int]], max_new_tokens: int, settings: AugmentParams, seed: int,
             description: str) -> list[tuple[str, int]]:
    """Sampled continuations of token-id prompts in batches; each with the seed its batch was drawn with."""
    texts: list[tuple[str, int]] = []
    options = lambda count: BatchOptions(temperatures=[settings.temperature] * count, top_ps=[settings.top_p] * count)  # noqa: E731
    for start in tqdm(range(0, len(prompts), settings.batch_size), desc=description, unit="batch", disable=len(prompts) < 2):
        chunk = prompts[start : start + settings.batch_size]
        batch_seed = seed + start
        torch.manual_seed(batch_seed)
        rows = generate_batch(generator.engine, chunk, max_new_tokens, options=options(len(chunk)))
        texts += [(row["text"], batch_seed) for row in rows]
    return texts


def _provenance(method: str, generator: Generator | None, prompt: str, seed: int | None, source: str | None) -> dict:
    return {"origin": "synthetic", "method": method, "generator": generator.name if generator else "rule",
            "generator_version": generator.version if generator else "", "prompt_id": prompt,
            "seed": -1 if seed is None else seed, "source_note_id": source or ""}


def summarise(generator: Generator, notes: list[str], finetune: FinetuneParams) -> list[str]:
    """The generator's greedy one-sentence summaries: the targets of synthetic notes."""
    generated = scored_generate(generator.engine, [Request(text=n) for n in notes], finetune.max_source_tokens,
                                finetune.max_target_tokens, finetune.generation_batch_size, description="summarising")
    return [g.text for g in generated]


def issued(notes: pd.DataFrame) -> dict[str, list[str]]:
    """The surrogate identifiers and dates de-identification issued for these notes: a synthetic note may repeat
    them (the residual-PHI checks pass them), never anything else that looks like a record number or a date."""
    return {column: sorted({value for values in notes[column] for value in values}) if column in notes else []
            for column in SURROGATE_COLUMNS}


def fewshot_notes(generator: Generator, expert: str, train: pd.DataFrame, settings: AugmentParams,
                  finetune: FinetuneParams, seed: int) -> list[dict]:
    rng = random.Random(seed)
    tokenizer = generator.engine.tokenizer
    requests, ids = [], []
    for _ in range(settings.notes_per_expert):
        shown = train.sample(n=min(settings.shots, len(train)), random_state=rng.randrange(1 << 30))
        specialty = rng.choice(list(shown["specialty"]))
        requests.append(fewshot_request(specialty, [truncate_head(tokenizer, t, settings.shot_tokens) for t in shown["text"]]))
        ids.append((specialty, prompt_id(FEWSHOT_TEMPLATE, specialty, *shown["note_id"]), issued(shown)))
    budget = settings.shots * (settings.shot_tokens + 16) + 64
    prompts = [prompt_ids(tokenizer, r, budget) for r in requests]
    notes = _sampled(generator, prompts, settings.note_tokens, settings, seed, f"writing {expert} notes")
    targets = summarise(generator, [text for text, _ in notes], finetune) if notes else []
    return [{"expert": expert, "specialty": specialty, "text": text, "target": target, **surrogates,
             **_provenance("fewshot_notes", generator, prompt, batch_seed, None)}
            for (specialty, prompt, surrogates), (text, batch_seed), target in zip(ids, notes, targets)]


def back_summaries(generator: Generator, expert: str, train: pd.DataFrame, settings: AugmentParams,
                   finetune: FinetuneParams, seed: int) -> list[dict]:
    tokenizer = generator.engine.tokenizer
    prompts = [prompt_ids(tokenizer, Request(text=t), finetune.max_source_tokens) for t in train["text"]]
    summaries = _sampled(generator, prompts, finetune.max_target_tokens, settings, seed, f"summarising {expert} notes again")
    return [{"expert": expert, "specialty": note.specialty, "text": note.text, "target": summary, **issued(train.loc[[index]]),
             **_provenance("back_summaries", generator, prompt_id(BACK_SUMMARY_TEMPLATE, note.note_id), batch_seed, note.note_id)}
            for (index, note), (summary, batch_seed) in zip(train.iterrows(), summaries)]


def reordered_sections(text: str, rng: random.Random) -> str | None:
    """The note with its sections after the first shuffled; None when it has fewer than three sections."""
    starts = [m.start() for m in SECTION_HEADER.finditer(text)]
    if len(starts) < 3:
        return None
    head, sections = text[: starts[1]], [text[a:b].rstrip() + "\n" for a, b in zip(starts[1:], [*starts[2:], len(text)])]
    order = list(range(len(sections)))
    while order == sorted(order):
        rng.shuffle(order)
    return (head + "".join(sections[i] for i in order)).rstrip()


_CONTRACTIONS = {full: short for short, full in ABBREVIATIONS.items() if "/" not in short and len(short) > 1}
_FULL_FORM = re.compile(r"(?i)\b(" + "|".join(re.escape(f) for f in sorted(_CONTRACTIONS, key=len, reverse=True)) + r")\b")


def swapped_abbreviations(text: str) -> str | None:
    """Abbreviations written out where the note has some; else spelled-out terms abbreviated. None: no change."""
    if ABBREVIATION.search(text):
        changed = ABBREVIATION.sub(lambda m: ABBREVIATIONS[m.group(1).lower()], text)
    else:
        changed = _FULL_FORM.sub(lambda m: _CONTRACTIONS[m.group(1).lower()], text)
    return changed if changed != text else None


def rule_variants(expert: str, train: pd.DataFrame, method: str, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for index, note in train.iterrows():
        variant = reordered_sections(note.text, rng) if method == "section_reorder" else swapped_abbreviations(note.text)
        if variant is not None:
            rows.append({"expert": expert, "specialty": note.specialty, "text": variant, "target": note.target,
                         **issued(train.loc[[index]]), **_provenance(method, None, prompt_id(method, note.note_id), seed, note.note_id)})
    return rows
