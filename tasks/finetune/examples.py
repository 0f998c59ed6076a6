"""Chat-formatted training examples: the note is the prompt, the one-sentence target the answer.

Notes longer than `max_source_tokens` keep their head: the identifying header is gone after
de-identification and the history of present illness, which a summary leans on most, comes first.
"""

from __future__ import annotations

from dataclasses import dataclass

SYSTEM_PROMPT = "You are a clinical documentation assistant. Summarise the note in one sentence."
IGNORE_INDEX = -100


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX on prompt tokens: loss only on the target

    @property
    def supervised_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def truncate_head(tokenizer, text: str, max_tokens: int) -> str:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens])


def prompt_ids(tokenizer, note: str, max_source_tokens: int) -> list[int]:
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": truncate_head(tokenizer, note, max_source_tokens)},
    ]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)


def tokenize_example(tokenizer, note: str, target: str, max_source_tokens: int, max_target_tokens: int) -> TokenizedExample:
    prompt = prompt_ids(tokenizer, note, max_source_tokens)
    answer = tokenizer(target, add_special_tokens=False)["input_ids"][:max_target_tokens]
    answer = answer + [tokenizer.eos_token_id]
    return TokenizedExample(prompt + answer, [IGNORE_INDEX] * len(prompt) + answer)
