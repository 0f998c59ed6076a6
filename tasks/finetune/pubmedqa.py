"""PubMedQA (expert-labelled part) as training data for the question-answering task expert.

Items are split by a hash of their PubMed id, so the held-out part is the same on every machine and
does not move when items are added. The target is the decision, then the long answer:
"yes. The effects of ...". `reasoning_free_pred` and `reasoning_required_pred` are model outputs
shipped with the corpus and are never read.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from tasks.finetune.examples import ANSWERS, Request


@dataclass(frozen=True)
class QuestionItem:
    pmid: str
    question: str
    context: str
    decision: str
    long_answer: str

    @property
    def request(self) -> Request:
        return Request(question=self.question, context=self.context)

    @property
    def target(self) -> str:
        return f"{self.decision}. {self.long_answer}"


def read_pubmedqa(path: Path) -> list[QuestionItem]:
    """Items of a PubMedQA JSON file (PMID -> QUESTION, CONTEXTS, final_decision, LONG_ANSWER)."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: PubMedQA file not found")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    items = []
    for pmid, entry in raw.items():
        for field in ("QUESTION", "CONTEXTS", "final_decision", "LONG_ANSWER"):
            if field not in entry:
                raise ValueError(f"{path}: item {pmid} has no field {field!r}")
        if entry["final_decision"] not in ANSWERS:
            raise ValueError(f"{path}: item {pmid} field 'final_decision' must be one of {ANSWERS}")
        items.append(QuestionItem(str(pmid), entry["QUESTION"], " ".join(entry["CONTEXTS"]),
                                  entry["final_decision"], entry["LONG_ANSWER"]))
    return items


def split_part(pmid: str, seed: int, holdout: float, val: float) -> str:
    """'test' for the held-out share, then 'val', else 'train'; fixed by the id and seed alone."""
    position = int(hashlib.sha256(f"{seed}:{pmid}".encode()).hexdigest()[:8], 16) / 0x1_0000_0000
    if position < holdout:
        return "test"
    return "val" if position < holdout + val else "train"


def split_pubmedqa(items: list[QuestionItem], seed: int, holdout: float, val: float) -> dict[str, list[QuestionItem]]:
    parts: dict[str, list[QuestionItem]] = {"train": [], "val": [], "test": []}
    for item in items:
        parts[split_part(item.pmid, seed, holdout, val)].append(item)
    return parts
