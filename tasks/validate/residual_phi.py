"""Structured identifiers that must not survive de-identification.

Our surrogates come from ranges that are never issued (SSN area 9xx, the 555 exchange,
example.org, documentation IP blocks), so each pattern excludes them and matches only identifiers
that look real.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from tasks.deidentify.token_model import UNITS, is_measurement

RESIDUAL_PHI_PATTERNS: dict[str, str] = {
    "ssn": r"(?<!\d)(?!9\d\d|000|666)\d{3}-\d{2}-\d{4}(?!\d)",
    "phone": r"(?<!\d)\(?\d{3}\)?[ .\-]?(?!555)\d{3}[ .\-]\d{4}(?!\d)",
    "email": r"(?i)[a-z0-9._%+\-]+@(?!example\.)[a-z0-9.\-]+\.[a-z]{2,}",
    "url": r"(?i)\b(?:https?://|www\.)(?!example\.)",
    "ip_address": r"(?<![\d.])(?!192\.0\.2\.|198\.51\.100\.|203\.0\.113\.)(?:\d{1,3}\.){3}\d{1,3}(?![\d.])",
}

# A labelled record or account number. Our identifier surrogates keep the original's format, so a match is
# residual PHI only when it is not one of the surrogates de-identification issued for that note.
LABELLED_RECORD_NUMBER = (r"(?i)\b(?:mrn|medical record(?: number| no\.?| #)?|acct|account(?: number| no\.?)?|"
                          r"record(?: number| no\.?))[ \t]*[:#]?[ \t]*(?P<id>(?=[A-Z\-]*\d)[A-Z0-9][A-Z0-9\-]{3,})\b")


# Dates. De-identification shifts the dates it finds (and tags those it cannot parse), so a date is residual PHI
# only when it is none of the shifted dates issued for that note. Month names are matched in any case except
# "may", "mar" and "dec" (a verb, the medication record, "decreased"), which count only capitalised.
MONTH = (r"(?:(?-i:May|MAY)|(?-i:Mar|MAR)(?:ch)?|(?-i:Dec|DEC)(?:ember)?|Jan(?:uary)?|Feb(?:ruary)?|Apr(?:il)?|"
         r"June?|July?|Aug(?:ust)?|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?)\.?")
_M, _D, _YEAR = r"(?:0?[1-9]|1[0-2])", r"(?:0?[1-9]|[12]\d|3[01])", r"(?:19|20)\d{2}"
_DAY = rf"{_D}(?:st|nd|rd|th)?"
_NUMBER_START, _NUMBER_END = r"(?<![\d/.])", r"(?![\d/%+]|\.\d)"  # not inside a longer number, ratio, decimal, grade
# (form, whether it is a full date: that is a date whatever stands around it; a month/day or a lone year may be a
# measurement, a score or a clock time)
DATE_FORMS: dict[str, tuple[str, bool]] = {
    "iso": (rf"{_NUMBER_START}{_YEAR}(?:-{_M}-|/{_M}/){_D}{_NUMBER_END}", True),
    "numeric_year": (rf"{_NUMBER_START}(?:{_M}/{_D}/|{_M}-{_D}-){_YEAR}{_NUMBER_END}", True),
    "numeric_short_year": (rf"{_NUMBER_START}(?:{_M}/{_D}/|{_M}-{_D}-)\d{{2}}{_NUMBER_END}", False),  # or "BIPAP 10/5/12"
    "dotted": (rf"{_NUMBER_START}{_M}\.{_D}\.{_YEAR}{_NUMBER_END}", True),
    "month_slash_year": (rf"{_NUMBER_START}{_M}/{_YEAR}{_NUMBER_END}", True),
    # not a fraction ("1/8th inch") or days of a gestational week ("35-1/7")
    "month_day": (rf"{_NUMBER_START}(?<!\d-){_M}/{_D}{_NUMBER_END}(?!st|nd|rd|th)", False),
    "month_name_day_year": (rf"\b{MONTH}[ \t]+{_DAY},?[ \t]+{_YEAR}\b", True),
    "day_month_name_year": (rf"\b{_DAY}[ \t]+(?:of[ \t]+)?{MONTH},?[ \t]+{_YEAR}\b", True),
    "month_name_year": (rf"\b{MONTH},?[ \t]+(?:of[ \t]+)?(?:{_YEAR}|'\d{{2}})\b", True),
    "month_name_day": (rf"\b{MONTH}[ \t]+{_DAY}\b", False),
    "day_month_name": (rf"\b{_DAY}[ \t]+(?:of[ \t]+)?{MONTH}(?!\w)", False),
    "year_in_context": (rf"\b(?:in|since|from|during|until|year|born|circa|early|mid|late|spring|summer|fall|"
                        rf"autumn|winter)[ \t]+(?:of[ \t]+)?{_YEAR}\b(?![ \t]*(?:-|to)[ \t]*(?:[01]\d|2[1-4])\d\d)", False),
}
NUMERIC_MONTH_DAY = ("iso", "numeric_year", "numeric_short_year", "dotted", "month_day")
DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
DATE_PATTERN = re.compile("|".join(f"(?P<{name}>{form})" for name, (form, _) in DATE_FORMS.items()), re.I)
# What follows an amount, not a date: a unit, a dose form, "of", a vent mode ("1/2 tab", "2/3 NS", "3/4 of the dose",
# "2000 hrs", "12/5 peep").
AMOUNT_AFTER = re.compile(rf"[ \t]?(?:{UNITS}|l|hrs?|hours|weeks?|wks?|inch(?:es)?|tabs?|tablets?|caps?|capsules?|"
                          r"pills?|puffs?|drops?|ns|strength|of|dose|peep|psv?|cpap|bipap)\b|[ \t]?%", re.I)
# Exam grades read like early-month dates ("motor 4/5", "2/6 murmur", "EHL 5/5"): x/y with x <= y <= 6 is a date
# only after a word that introduces one; any x/y after an exam or score label is none ("pupils 3/7", "score 7/10").
GRADE = re.compile(r"([0-6])/([1-6])")
EXAM_LABEL = re.compile(r"\b(?:pupils?|score|grade|strength|motor|reflex(?:es)?|murmur|power|wean(?:ed|ing)?)\b"
                        r"[^.\n]{0,15}$", re.I)
DATE_WORD_BEFORE = re.compile(r"\b(?:on|since|dated?|from|until|till|by|in|(?:mon|tues|wednes|thurs|fri|satur|sun)day)"
                              r"[ \t,]*$", re.I)


def _on_the_calendar(match: re.Match) -> bool:
    """Whether a numeric month/day names a day that exists ("2/30" is no date, but a range of pressures)."""
    if match.lastgroup not in NUMERIC_MONTH_DAY:
        return True
    numbers = [int(n) for n in re.findall(r"\d+", match[0])]
    month, day = numbers[1:3] if match.lastgroup == "iso" else numbers[:2]
    return day <= DAYS_IN_MONTH[month - 1]


def _looks_like_date_only(text: str, match: re.Match) -> bool:
    """A year-less or year-only match that is a measurement, score, grade, amount or clock time."""
    if DATE_FORMS[match.lastgroup][1]:
        return False
    start, end = match.span()
    grade = GRADE.fullmatch(match[0])
    if grade and int(grade[1]) <= int(grade[2]) and not DATE_WORD_BEFORE.search(text, max(0, start - 20), start):
        return True
    if match.lastgroup == "month_day" and EXAM_LABEL.search(text, max(0, start - 25), start):
        return True
    return bool(AMOUNT_AFTER.match(text, end)) or (text[start].isdigit() and is_measurement(text, start, end))


def _without(text: str, issued: Iterable[str]) -> str:
    """`text` with every issued surrogate date blanked out (same length, so offsets hold)."""
    for date in sorted({d for d in issued if d}, key=len, reverse=True):
        text = re.sub(rf"{_NUMBER_START}{re.escape(date)}{_NUMBER_END}", lambda m: " " * len(m[0]), text, flags=re.I)
    return text


def unissued_dates(text: str, issued: Iterable[str] = ()) -> list[tuple[int, int]]:
    """(start, end) of each date in `text` that is none of the `issued` surrogate dates."""
    remaining = _without(text, issued)
    return [m.span() for m in DATE_PATTERN.finditer(remaining)
            if _on_the_calendar(m) and not _looks_like_date_only(remaining, m)]
