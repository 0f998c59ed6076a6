"""Cleansing and standardisation of note text before validation.

- whitespace: non-breaking and other Unicode spaces become spaces, runs of spaces collapse, line
  ends are unified and more than one blank line collapses to one;
- encoding: control characters go; text decoded with replacement characters (U+FFFD, what invalid
  UTF-8 becomes when read) is not repaired but reported, and such rows are quarantined by the gate;
- section headers at the start of a line ("HPI:", "HISTORY OF PRESENT ILLNESS:", "A/P:") take one
  canonical spelling;
- optionally (`validate.expand_abbreviations`), common clinical abbreviations are written out.
"""

from __future__ import annotations

import re
import unicodedata

REPLACEMENT_CHARACTER = "\ufffd"

SECTION_HEADERS = {
    "chief complaint": ("cc", "chief complaint", "chief complaints", "reason for visit"),
    "history of present illness": ("hpi", "history of present illness", "history of the present illness", "present illness"),
    "past medical history": ("pmh", "pmhx", "past medical history", "medical history"),
    "past surgical history": ("psh", "past surgical history", "surgical history"),
    "medications": ("meds", "medications", "current medications", "medications on admission"),
    "allergies": ("allergies", "drug allergies"),
    "social history": ("sh", "social history", "social"),
    "family history": ("fh", "family history"),
    "review of systems": ("ros", "review of systems"),
    "physical examination": ("pe", "physical exam", "physical examination", "exam", "examination"),
    "assessment and plan": ("a/p", "a&p", "assessment and plan", "assessment/plan", "impression and plan"),
    "assessment": ("assessment", "impression"),
    "plan": ("plan", "recommendations"),
}
_HEADER_SPELLING = {spelling: canonical for canonical, spellings in SECTION_HEADERS.items() for spelling in spellings}
SECTION_HEADER = re.compile(
    r"(?im)^(?P<indent>[ \t]*)(?P<header>" + "|".join(re.escape(s) for s in sorted(_HEADER_SPELLING, key=len, reverse=True))
    + r")[ \t]*:"
)

ABBREVIATIONS = {
    "pt": "patient", "pts": "patients", "hx": "history", "dx": "diagnosis", "tx": "treatment", "rx": "prescription",
    "sx": "symptoms", "fx": "fracture", "s/p": "status post", "c/o": "complains of", "w/": "with", "w/o": "without",
    "sob": "shortness of breath", "doe": "dyspnea on exertion", "cp": "chest pain", "n/v": "nausea and vomiting",
    "htn": "hypertension", "dm": "diabetes mellitus", "cad": "coronary artery disease", "chf": "congestive heart failure",
    "copd": "chronic obstructive pulmonary disease", "mi": "myocardial infarction", "uti": "urinary tract infection",
    "bid": "twice a day", "tid": "three times a day", "qid": "four times a day", "prn": "as needed", "po": "by mouth",
    "yo": "year-old", "y/o": "year-old", "nkda": "no known drug allergies", "wnl": "within normal limits",
}
ABBREVIATION = re.compile(
    r"(?i)(?<![\w/])(" + "|".join(re.escape(a) for a in sorted(ABBREVIATIONS, key=len, reverse=True)) + r")(?![\w/])"
)
_SPACES = re.compile(r"[^\S\n]+")
_BLANK_LINES = re.compile(r"\n\s*\n+")


def has_invalid_encoding(text: str) -> bool:
    return REPLACEMENT_CHARACTER in text


def normalise_whitespace(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = "".join(c for c in text if c in "\n\t" or unicodedata.category(c) != "Cc")
    text = _SPACES.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", text).strip()


def normalise_section_headers(text: str) -> str:
    return SECTION_HEADER.sub(lambda m: f"{m['indent']}{_HEADER_SPELLING[m['header'].lower()].upper()}:", text)


def expand_abbreviations(text: str) -> str:
    return ABBREVIATION.sub(lambda m: ABBREVIATIONS[m.group(1).lower()], text)


def cleanse_text(text: str, expand: bool = False) -> str:
    text = normalise_section_headers(normalise_whitespace(text))
    return expand_abbreviations(text) if expand else text
