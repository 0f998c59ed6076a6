"""Requests and chat-formatted training examples for the two kinds of expert.

- A specialty expert summarises a note in one sentence. Notes longer than `max_source_tokens` keep
  their head: the identifying header is gone after de-identification, and the history of present
  illness, which a summary leans on most, comes first.
- A task expert answers a biomedical question from an abstract: yes, no or maybe, then the long
  answer. Abstracts longer than the budget keep their tail, because the results, which decide the
  answer, come last; the question is always kept whole.
"""

from __future__ import annotations

from dataclasses import dataclass

SUMMARY_SYSTEM_PROMPT = "You are a clinical documentation assistant. Summarise the note in one sentence."
QUESTION_SYSTEM_PROMPT = (
    "You are a biomedical research assistant. Answer the question from the abstract with yes, no or maybe, "
    "then explain the answer in a few sentences."
)
ANSWERS = ("yes", "no", "maybe")
IGNORE_INDEX = -100


@dataclass(frozen=True)
class Request:
    """What a model is asked: a note to summarise, a question about a context, or chat messages
    ((role, content) pairs; without a system message the note-summary instruction is the system's)."""

    text: str | None = None
    question: str | None = None
    context: str | None = None
    messages: tuple[tuple[str, str], ...] | None = None

    @property
    def is_question(self) -> bool:
        return self.question is not None

    @property
    def source(self) -> str:
        """What an answer must be supported by: the note, the context, or what the user wrote."""
        if self.messages is not None:
            return "\n".join(content for role, content in self.messages if role == "user")
        return self.context if self.is_question else self.text

    @property
    def words(self) -> str:
        """All the text the request carries (what a router reads)."""
        return f"{self.question}\n{self.context}" if self.is_question else self.source

    @classmethod
    def from_record(cls, record: dict, where: str) -> Request:
        """`where` names the file and line, so that a bad record is easy to find."""
        if isinstance(record.get("question"), str) and record["question"].strip():
            context = record.get("context")
            if not isinstance(context, str) or not context.strip():
                raise ValueError(f"{where}: field 'context' must be a non-empty string when 'question' is given")
            return cls(question=record["question"], context=context)
        if isinstance(record.get("text"), str) and record["text"].strip():
            return cls(text=record["text"])
        if record.get("messages") is not None:
            return cls(messages=chat_messages(record["messages"], where))
        raise ValueError(f"{where}: a record needs a non-empty 'text' (a note), 'question' and 'context', or 'messages'")


CHAT_ROLES = ("system", "user", "assistant")


def chat_messages(messages, where: str) -> tuple[tuple[str, str], ...]:
    """Chat messages as (role, content) pairs, checked: a list of {role, content} whose roles are system,
    user or assistant, with at least one non-empty user message."""
    if hasattr(messages, "tolist"):  # a numpy array, as pandas holds a column of lists
        messages = messages.tolist()
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: field 'messages' must be a non-empty list of {{role, content}}")
    pairs = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in CHAT_ROLES or not isinstance(message.get("content"), str):
            raise ValueError(f"{where}: messages[{index}] needs 'role' (one of {', '.join(CHAT_ROLES)}) and a string 'content'")
        pairs.append((message["role"], message["content"]))
    if not any(role == "user" and content.strip() for role, content in pairs):
        raise ValueError(f"{where}: field 'messages' holds no non-empty user message")
    return tuple(pairs)


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX on prompt tokens: loss only on the target
    answer_weight: float = 1.0  # loss weight of the first target token (a question's yes / no / maybe)

    @property
    def supervised_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)

    @property
    def loss_weight(self) -> float:
        return self.supervised_tokens - 1 + self.answer_weight


def _token_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def truncate_head(tokenizer, text: str, max_tokens: int) -> str:
    ids = _token_ids(tokenizer, text)
    return text if len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens])


def truncate_tail(tokenizer, text: str, max_tokens: int) -> str:
    ids = _token_ids(tokenizer, text)
    return text if len(ids) <= max_tokens else tokenizer.decode(ids[-max_tokens:])


def _chat_ids(tokenizer, system: str, user: str) -> list[int]:
    return _template_ids(tokenizer, [{"role": "system", "content": system}, {"role": "user", "content": user}])


def _template_ids(tokenizer, messages: list[dict]) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def prompt_ids(tokenizer, request: Request, max_source_tokens: int) -> list[int]:
    """The chat prompt an expert sees; a chat's last user message is cut to the budget like a note."""
    if request.messages is not None:
        messages = [{"role": role, "content": content} for role, content in request.messages]
        if messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": SUMMARY_SYSTEM_PROMPT})
        last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
        messages[last_user]["content"] = truncate_head(tokenizer, messages[last_user]["content"], max_source_tokens)
        return _template_ids(tokenizer, messages)
    if request.is_question:
        context = truncate_tail(tokenizer, request.context, max_source_tokens)
        return _chat_ids(tokenizer, QUESTION_SYSTEM_PROMPT, f"Abstract: {context}\nQuestion: {request.question}")
    return _chat_ids(tokenizer, SUMMARY_SYSTEM_PROMPT, truncate_head(tokenizer, request.text, max_source_tokens))


def tokenize_example(tokenizer, request: Request, target: str, max_source_tokens: int, max_target_tokens: int,
                     answer_weight: float = 1.0) -> TokenizedExample:
    """`answer_weight` applies to questions only: their first target token is the decision."""
    prompt = prompt_ids(tokenizer, request, max_source_tokens)
    answer = _token_ids(tokenizer, target)[:max_target_tokens] + [tokenizer.eos_token_id]
    return TokenizedExample(prompt + answer, [IGNORE_INDEX] * len(prompt) + answer,
                            answer_weight if request.is_question else 1.0)


def answer_of(target: str) -> str:
    """The decision a question's target starts with ("yes. The effects ..." -> "yes")."""
    return target.split(".", 1)[0]


def answer_token_ids(tokenizer) -> dict[str, list[int]]:
    """The first-token ids that spell each answer (lower and capitalised), for reading it from logits."""
    return {answer: sorted({_token_ids(tokenizer, form)[0] for form in (answer, answer.capitalize())})
            for answer in ANSWERS}
