"""Batch inference with a registered expert: JSONL in, the same records plus predictions out.

Every input line ends up in the output, in order: either with `prediction` (and `answer` for
yes/no/maybe questions) or with `error` saying which line and field were wrong.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tasks.finetune.examples import Request


@dataclass
class PredictionCounts:
    read: int
    predicted: int
    rejected: int


def model_uri(reference: str) -> str:
    """'name' (latest version), 'name@alias', 'name/3' or a full 'models:/...' or 'runs:/...' URI."""
    if ":/" in reference:
        return reference
    if "@" in reference:
        name, alias = reference.split("@", 1)
        return f"models:/{name}@{alias}"
    if "/" in reference:
        return f"models:/{reference}"
    return f"models:/{reference}/latest"


def read_requests(path: Path) -> tuple[list[dict], list[Request | None], list[str | None]]:
    """Records, their requests (None where invalid) and the error of each invalid one."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: input file not found")
    records, requests, errors = [], [], []
    with path.open(encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path} line {number}"
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError(f"{where}: a record must be a JSON object")
                if "id" not in record:
                    raise ValueError(f"{where}: field 'id' is missing")
                requests.append(Request.from_record(record, where))
                errors.append(None)
            except json.JSONDecodeError as error:
                record = {"id": None}
                requests.append(None)
                errors.append(f"{where}: not valid JSON ({error.msg} at column {error.colno})")
            except ValueError as error:
                record = {"id": record.get("id")} if isinstance(record, dict) else {"id": None}
                requests.append(None)
                errors.append(str(error))
            records.append(record)
    return records, requests, errors


def predict_file(expert_model, input_path: Path, output_path: Path, progress: bool = True) -> PredictionCounts:
    """`expert_model` answers `respond(requests, progress)`, as ExpertAdapterModel does."""
    records, requests, errors = read_requests(input_path)
    valid = [i for i, request in enumerate(requests) if request is not None]
    responses = expert_model.respond([requests[i] for i in valid], progress=progress) if valid else []
    by_index = dict(zip(valid, responses))
    output_path.parent.mkdir(parents=True, exist_ok=True)
    with output_path.open("w", encoding="utf-8") as out:
        for index, record in enumerate(records):
            result = record | by_index[index] if index in by_index else record | {"error": errors[index]}
            out.write(json.dumps(result, ensure_ascii=False) + "\n")
    return PredictionCounts(len(records), len(valid), len(records) - len(valid))
