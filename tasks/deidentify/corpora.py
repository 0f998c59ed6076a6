"""Readers for annotated PHI corpora and for plain note files, into one `GoldNote` contract.

Formats:
- `physionet`: the PhysioNet deid gold corpus, a directory (or the `.text` file) holding `id.text`
  ("START_OF_RECORD=pid||||note||||" records) and `id-phi.phrase` ("pid note start end type text").
- `presidio`: presidio-evaluator JSON (a list of {full_text, spans: [{entity_type, start_position,
  end_position}]}).
- `jsonl`: one note per line with `note_id`, `text`, optional `patient_id` and optional `spans`
  ([{start, end, entity_type}]); our sample corpus's gold file is folded in by `read_sample_corpus`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path


class CorpusFormatError(ValueError):
    """A corpus file is malformed; the message names the file, the line and the field."""


@dataclass(frozen=True)
class GoldSpan:
    start: int
    end: int
    entity_type: str


@dataclass
class GoldNote:
    note_id: str
    text: str
    patient_id: str | None = None
    spans: list[GoldSpan] = field(default_factory=list)
    group: str | None = None  # notes that must stay on one side of a train/held-out split

    @property
    def split_group(self) -> str:
        return self.group or self.patient_id or self.note_id


RECORD = re.compile(r"START_OF_RECORD=(?P<patient>[^|]+)\|\|\|\|(?P<note>[^|]+)\|\|\|\|\n(?P<text>.*?)\|\|\|\|END_OF_RECORD", re.S)


def read_physionet(path: Path) -> list[GoldNote]:
    """PhysioNet deid: offsets in id-phi.phrase count from just after the record's header line."""
    directory = path if path.is_dir() else path.parent
    text_file, phrase_file = directory / "id.text", directory / "id-phi.phrase"
    for required in (text_file, phrase_file):
        if not required.exists():
            raise CorpusFormatError(f"{required}: not found (a PhysioNet corpus needs id.text and id-phi.phrase)")
    notes = {}
    for match in RECORD.finditer(text_file.read_text(encoding="utf-8", errors="replace")):
        key = (match["patient"].strip(), match["note"].strip())
        notes[key] = GoldNote(note_id=f"{key[0]}-{key[1]}", patient_id=key[0], text=match["text"])
    if not notes:
        raise CorpusFormatError(f"{text_file}: no START_OF_RECORD=...||||END_OF_RECORD records found")
    for line_number, line in enumerate(phrase_file.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split(maxsplit=5)
        if len(fields) < 5 or not (fields[2].isdigit() and fields[3].isdigit()):
            raise CorpusFormatError(f"{phrase_file} line {line_number}: expected 'patient note start end type text'")
        note = notes.get((fields[0], fields[1]))
        if note is None:
            raise CorpusFormatError(f"{phrase_file} line {line_number}: patient {fields[0]} note {fields[1]} is not in {text_file.name}")
        start, end = int(fields[2]), int(fields[3])
        if not 0 <= start < end <= len(note.text):
            raise CorpusFormatError(f"{phrase_file} line {line_number}: span {start}-{end} lies outside note {note.note_id}")
        note.spans.append(GoldSpan(start, end, fields[4]))
    return list(notes.values())


def read_presidio(path: Path) -> list[GoldNote]:
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise CorpusFormatError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None
    notes = []
    for index, record in enumerate(records):
        if "full_text" not in record:
            raise CorpusFormatError(f"{path} record {index}: field 'full_text' is missing")
        spans = [GoldSpan(s["start_position"], s["end_position"], s["entity_type"]) for s in record.get("spans", [])]
        # Sentences from one template share their wording, so the template is the split group.
        notes.append(GoldNote(note_id=str(index), text=record["full_text"], spans=spans, group=f"template-{record.get('template_id', index)}"))
    return notes


def read_jsonl(path: Path) -> list[GoldNote]:
    notes = []
    with path.open(encoding="utf-8", errors="replace") as lines:
        for line_number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise CorpusFormatError(f"{path} line {line_number}: not valid JSON ({error.msg})") from None
            for required in ("note_id", "text"):
                if not isinstance(record.get(required), str) and not (required == "note_id" and isinstance(record.get(required), int)):
                    raise CorpusFormatError(f"{path} line {line_number}: field '{required}' is missing or not a string")
            spans = [GoldSpan(s["start"], s["end"], s.get("entity_type", "PHI")) for s in record.get("spans", [])]
            patient = record.get("patient_id")
            notes.append(GoldNote(str(record["note_id"]), record["text"], None if patient is None else str(patient), spans))
    return notes


def read_sample_corpus(directory: Path) -> list[GoldNote]:
    """Our generated corpus: notes.jsonl plus gold_phi.jsonl."""
    from tasks.corpus.generate import read_gold_spans

    gold = read_gold_spans(directory)
    return [
        GoldNote(n.note_id, n.text, n.patient_id, [GoldSpan(s.start, s.end, s.entity_type) for s in gold.get(n.note_id, [])])
        for n in read_jsonl(directory / "notes.jsonl")
    ]


READERS = {"physionet": read_physionet, "presidio": read_presidio, "jsonl": read_jsonl, "sample": read_sample_corpus}


def read_corpus(path: Path, corpus_format: str = "auto") -> list[GoldNote]:
    path = Path(path)
    if not path.exists():
        raise CorpusFormatError(f"{path}: not found")
    if corpus_format == "auto":
        if (path.is_dir() and (path / "id.text").exists()) or path.suffix == ".text":
            corpus_format = "physionet"
        elif path.is_dir() and (path / "gold_phi.jsonl").exists():
            corpus_format = "sample"
        elif path.suffix == ".json":
            corpus_format = "presidio"
        elif path.suffix == ".jsonl":
            corpus_format = "jsonl"
        else:
            raise CorpusFormatError(f"{path}: cannot tell the format; pass one of {', '.join(READERS)}")
    return READERS[corpus_format](path)
