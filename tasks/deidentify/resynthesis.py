"""PHI re-synthesis: copies of annotated notes whose gold PHI is replaced by other values of the same kind.

A corpus of 1,000 notes names a few hundred people; a model trained on it learns those names as words.
Each copy here swaps every gold span for a fresh value in the original's shape (names from the census
lists, places, dates as valid month/day in the original's punctuation, digits for digits) and sometimes
another letter case, so the model has to learn PHI from its context and form rather than its identity.
"""

from __future__ import annotations

import random
import re
from functools import cache

from tasks.deidentify.corpora import GoldNote, GoldSpan
from tasks.deidentify.lexicons import person_names, us_places
from tasks.deidentify.surrogates import MONTHS

# Words of a gold span that describe the PHI rather than being it: kept as they are.
KEPT_WORDS = frozenset("""hospital hosp medical center ctr clinic rehab memorial general university st saint
    nursing home campus county of the and dr mr mrs ms""".split())
PERSON_TYPES = frozenset({"HCPName", "PTName", "PTNameInitial", "RelativeProxyName", "PATIENT", "RELATIVE", "CLINICIAN",
                          "PERSON"})
PLACE_TYPES = frozenset({"Location", "HOSPITAL", "CITY", "STREET", "GPE", "STREET_ADDRESS", "LOCATION"})
DATE_TYPES = frozenset({"Date", "DateYear", "DATE", "DATE_TIME"})
NUMERIC_DATE = re.compile(r"(\d{1,2})([/\-.])(\d{1,2})(?:([/\-.])(\d{2,4}))?")


@cache
def _name_pools() -> tuple[list[str], list[str], list[str]]:
    first_names, last_names = person_names()
    # Common surnames dominate real notes; rare ones teach that an unknown word can be a name too.
    surnames = sorted(last_names, key=last_names.get)
    return sorted(first_names), surnames[:20_000] + surnames[20_000::20], sorted(us_places())


def _like(original: str, word: str) -> str:
    """`word` in the letter case of `original`."""
    if original.isupper() and len(original) > 1:
        return word.upper()
    if original.islower():
        return word.lower()
    return word.capitalize()


def _random_digits(rng: random.Random, digits: str) -> str:
    return "".join(rng.choice("123456789" if i == 0 and len(digits) > 1 else "0123456789") for i, _ in enumerate(digits))


def _date(rng: random.Random, value: str) -> str:
    month, day = rng.randint(1, 12), rng.randint(1, 28)

    def numeric(match: re.Match) -> str:
        first, sep, second, sep2, year = match.groups()
        new = f"{month:0{len(first) if first[0] == '0' else 1}d}{sep}{day:0{len(second) if second[0] == '0' else 1}d}"
        if year:
            new += sep2 + (f"{rng.randint(0, 99):02d}" if len(year) == 2 else str(rng.randint(1930, 2025)))
        return new

    if NUMERIC_DATE.fullmatch(value):
        return NUMERIC_DATE.sub(numeric, value)
    out = []
    for token in re.split(r"(\W+)", value):
        bare = token.lower().rstrip(".")
        if len(token) == 4 and token.isdigit():
            out.append(str(rng.randint(1930, 2025)))
        elif token.isdigit() and (token.startswith("0") or len(token) == 2 and int(token) > 31):  # "'92", "'04"
            out.append(f"{rng.randint(0, 99):02d}")
        elif token.isdigit():
            out.append(str(day))
        elif any(m.startswith(bare) for m in MONTHS) and len(bare) >= 3:
            name = MONTHS[month - 1]
            out.append(_like(token, name[: len(bare)] if len(bare) <= 4 else name))
        else:
            out.append(token)
    return "".join(out)


def _replacement(rng: random.Random, entity_type: str, value: str) -> str:
    first_names, surnames, places = _name_pools()
    pieces = re.split(r"([A-Za-z][A-Za-z'\-]*|\d+)", value)
    words = pieces[1::2]
    if entity_type in DATE_TYPES:
        return _date(rng, value)
    out = []
    for index, piece in enumerate(pieces):
        if index % 2 == 0 or piece.lower() in KEPT_WORDS:
            out.append(piece)
        elif piece.isdigit():
            out.append(str(rng.randint(90, 109)) if entity_type in ("Age", "AGE") else _random_digits(rng, piece))
        elif len(piece) == 1 or entity_type in PLACE_TYPES and piece.isupper() and len(piece) <= 4:  # "J.", "GH"
            out.append(_like(piece, "".join(rng.choice("abcdefghjklmnprstw") for _ in piece)))
        elif entity_type in PERSON_TYPES:
            pool = first_names if index == 1 and len(words) > 1 or entity_type == "RelativeProxyName" and len(words) == 1 else surnames
            out.append(_like(piece, rng.choice(pool)))
        elif entity_type in PLACE_TYPES:
            out.append(_like(piece, rng.choice(places if rng.random() < 0.6 else surnames)))
        else:
            out.append("".join(rng.choice("ABCDEFGHJKLMNPRSTUVWXYZ") if c.isalpha() else c for c in piece))
    return "".join(out)


def resynthesize(note: GoldNote, rng: random.Random, case_flip: float = 0.2) -> GoldNote:
    """A copy of `note` whose gold spans hold other values of their kind; with probability `case_flip`
    the whole copy is upper- or lower-cased (nursing notes are often written in one case)."""
    pieces, spans, cursor, length = [], [], 0, 0
    chosen: dict[tuple[str, str], str] = {}  # one value, one replacement within the note
    for span in sorted(note.spans, key=lambda s: s.start):
        if span.start < cursor:
            continue  # overlapping gold spans: keep the first
        before = note.text[cursor : span.start]
        value = note.text[span.start : span.end]
        key = (span.entity_type, value.lower())
        new = chosen.setdefault(key, _replacement(rng, span.entity_type, value) or value)
        pieces += [before, new]
        length += len(before)
        spans.append(GoldSpan(length, length + len(new), span.entity_type))
        length += len(new)
        cursor = span.end
    pieces.append(note.text[cursor:])
    text = "".join(pieces)
    draw = rng.random()
    flipped = text.upper() if draw < case_flip / 2 else text.lower() if draw < case_flip else text
    text = flipped if len(flipped) == len(text) else text  # a few Unicode letters change length with case
    return GoldNote(f"{note.note_id}~{rng.getrandbits(32):08x}", text, note.patient_id, spans, note.group)
