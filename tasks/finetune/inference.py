"""Batched inference with a base model or an expert: summaries, answers to questions, target loss."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch
from tqdm import tqdm

from tasks.finetune.examples import ANSWERS, Request, answer_token_ids, prompt_ids


def _batches(items: Sequence, batch_size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), batch_size):
        yield items[start : start + batch_size]


def _left_padded(prompts: list[list[int]], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def _sorted_by_length(prompts: list[list[int]]) -> list[int]:
    """Prompts of similar length share a batch, so little padding is computed."""
    return sorted(range(len(prompts)), key=lambda i: len(prompts[i]))


@torch.no_grad()
def generate(model, tokenizer, requests: Sequence[Request], max_source_tokens: int, max_new_tokens: int,
             batch_size: int = 8, progress: bool = False, description: str = "generating",
             batch_context: Callable[[list[int]], AbstractContextManager] | None = None) -> list[str]:
    """Greedy continuations, one per request, in the order given.

    `batch_context(indices)`, when given, is entered around each batch with the indices of its
    requests (a mixture of experts sets each row's weights that way)."""
    model.eval()
    device = next(model.parameters()).device
    prompts = [prompt_ids(tokenizer, r, max_source_tokens) for r in requests]
    order = _sorted_by_length(prompts)
    outputs: list[str] = [""] * len(requests)
    with tqdm(total=len(requests), desc=description, unit="record", disable=not progress) as bar:
        for chunk in _batches(order, batch_size):
            batch = _left_padded([prompts[i] for i in chunk], tokenizer.pad_token_id, device)
            with batch_context(list(chunk)) if batch_context else nullcontext():
                generated = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                           pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            for row, index in enumerate(chunk):
                new_tokens = generated[row, batch["input_ids"].shape[1] :]
                outputs[index] = tokenizer.decode(new_tokens, skip_special_tokens=True).strip()
            bar.update(len(chunk))
    return outputs


@torch.no_grad()
def answer_probabilities(model, tokenizer, requests: Sequence[Request], max_source_tokens: int,
                         batch_size: int = 8, progress: bool = False,
                         batch_context: Callable[[list[int]], AbstractContextManager] | None = None) -> list[dict[str, float]]:
    """P(yes), P(no), P(maybe) from the next-token distribution after the prompt, renormalised over the three."""
    model.eval()
    device = next(model.parameters()).device
    candidates = answer_token_ids(tokenizer)
    prompts = [prompt_ids(tokenizer, r, max_source_tokens) for r in requests]
    order = _sorted_by_length(prompts)
    results: list[dict[str, float]] = [{}] * len(requests)
    for chunk in tqdm(list(_batches(order, batch_size)), desc="answering", unit="batch", disable=not progress):
        batch = _left_padded([prompts[i] for i in chunk], tokenizer.pad_token_id, device)
        # Left padding puts every prompt's last token in the last column: one LM-head row per request.
        with batch_context(list(chunk)) if batch_context else nullcontext():
            logits = model(**batch, logits_to_keep=1).logits[:, -1].float()
        probabilities = logits.softmax(-1)
        for row, index in enumerate(chunk):
            mass = {a: probabilities[row, candidates[a]].sum().item() for a in ANSWERS}
            total = sum(mass.values()) or 1.0
            results[index] = {a: round(m / total, 6) for a, m in mass.items()}
    return results


def best_answer(probabilities: dict[str, float]) -> str:
    return max(probabilities, key=probabilities.get)


def respond(model, tokenizer, requests: Sequence[Request], max_source_tokens: int, max_new_tokens: int,
            batch_size: int = 8, progress: bool = False,
            batch_context: Callable[[list[int]], AbstractContextManager] | None = None) -> list[dict]:
    """What `medlora predict` adds to each record: `prediction`, and for questions `answer` with its probabilities."""
    predictions = generate(model, tokenizer, requests, max_source_tokens, max_new_tokens, batch_size, progress,
                           batch_context=batch_context)
    responses: list[dict] = [{"prediction": text} for text in predictions]
    questions = [i for i, request in enumerate(requests) if request.is_question]
    if questions:
        question_context = (lambda rows: batch_context([questions[r] for r in rows])) if batch_context else None
        probabilities = answer_probabilities(model, tokenizer, [requests[i] for i in questions], max_source_tokens,
                                             batch_size, progress, question_context)
        for index, answer in zip(questions, probabilities):
            responses[index] |= {"answer": best_answer(answer), "answer_probabilities": answer}
    return responses
