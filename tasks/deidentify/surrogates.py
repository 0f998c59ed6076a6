"""Realistic, consistent surrogates for detected PHI, in the original value's form.

A surrogate is a pure function of (secret key, patient, entity type, original value) - and of the
note's case, for values whose own letters do not say it - so the same real name becomes the same
surrogate in every note of a patient and no real-to-surrogate table has to be stored. Structured
surrogates come from ranges that are never issued (SSN area 9xx, 555-01xx phone numbers,
example.org, documentation IP blocks), which lets the residual-PHI gate tell a surrogate from a
leaked identifier. Punctuation, spacing, digit grouping, case and kept words ("Hospital", "Drive")
are copied from the original, so a surrogate fits the text around it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import re
import secrets
from datetime import date, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Callable

from faker import Faker

KEY_FILE = Path("data/raw/.deid_key")  # inside the PHI zone; never tracked by git or pushed by DVC
MAP_FILE = Path("data/raw/surrogate_map.enc")  # likewise; written only when the data owner sets a map key
MAP_KEY_ENV = "MEDLORA_SURROGATE_MAP_KEY"
AGE_OVER_89 = "90+"
SURROGATE_IP_BLOCKS = ("192.0.2", "198.51.100", "203.0.113")
UPPER_CASE_NOTE_SHARE = 0.7  # a note whose letters are more than this share upper case is an upper-case note
INITIALS = "ABCDEFGHJKLMNPRSTW"
DIGITS = "0123456789"
# Words a surrogate keeps as the original wrote them: facility and street kinds, unit words, titles.
FACILITY_WORDS = frozenset("""hospital hosp medical med center centre ctr clinic infirmary health healthcare system
    nursing nsg home rehabilitation rehab hospice campus memorial general regional community facility snf ltac
    unit icu ward floor tower wing pavilion building institute east west north south""".split())
STREET_WORDS = frozenset("""street st avenue ave road rd lane ln drive dr court ct boulevard blvd way place pl terrace
    ter circle cir parkway pkwy highway hwy square sq trail trl route rte crossing loop alley row
    apt apartment suite ste unit n s e w ne nw se sw north south east west""".split())
UNIT_NUMBER = re.compile(r"#?\d{1,4}[A-Za-z]?|[A-Za-z]\d{1,4}")  # "Quartermain 2", "Weinberg 4C", "Apt 12"; not a ZIP
STATE_AND_ZIP = re.compile(r"\s*[A-Za-z]{2}\s+(?P<zip>\d{5}(?:-\d{4})?)\s*")
NAME_TITLES = frozenset({"dr", "mr", "mrs", "ms", "miss", "jr", "sr", "md", "rn", "np"})
NAME_PART = re.compile(r"(?<![A-Za-z'])(?:[A-Za-z]')?[A-Za-z]+")  # "Mary", "Ann", "O'Neil"; not the s of "Finch's"
PHONE_EXTENSION = re.compile(r"(?i)(?:ext(?:ension)?\.?|x|#)\s*\d+\s*$")

MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
          "november", "december")
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
DATE_FILLER_WORDS = frozenset("the of on in at mid early late end".split())
DATE_TOKEN = re.compile(r"(?P<time>\d{1,2}:\d{2}(?::\d{2})?(?:\s*[ap]\.?m\b\.?)?)"
                        r"|(?P<apostrophe>')?(?P<number>\d+)(?P<ordinal>st|nd|rd|th)?"
                        r"|(?P<word>[A-Za-z]+)", re.I)


def load_or_create_key(root: Path, env_value: str | None) -> bytes:
    """The surrogate key: MEDLORA_DEID_KEY if set, else a random key kept in the PHI zone."""
    if env_value:
        return env_value.encode()
    path = root / KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path.read_text().strip().encode()


def pseudonym(key: bytes, kind: str, value: str, length: int = 12) -> str:
    return hmac.new(key, f"{kind}\x00{value}".encode(), hashlib.sha256).hexdigest()[:length]


@lru_cache(maxsize=8)  # asked once per span, for the same note
def is_upper_case_note(note: str) -> bool:
    letters = re.findall(r"[^\W\d_]", note)
    return bool(letters) and sum(c.isupper() for c in letters) > UPPER_CASE_NOTE_SHARE * len(letters)


def match_case(original: str, surrogate: str, upper_note: bool = False) -> str:
    """The surrogate in the original's case (UPPER, lower, else Title); without letters, in the note's case."""
    letters = [c for c in original if c.isalpha()]
    if not letters:
        return surrogate.upper() if upper_note else surrogate
    if all(c.isupper() for c in letters):
        return surrogate.upper()
    if all(c.islower() for c in letters):
        return surrogate.lower()
    return re.sub(r"(?<![A-Za-z'])[a-z]", lambda m: m.group().upper(), surrogate)


def _scramble(rng: random.Random, value: str) -> str:
    """Format-preserving random identifier: digits stay digits, letters stay letters."""
    out = []
    for char in value:
        if char.isdigit():
            out.append(rng.choice(DIGITS))
        elif char.isalpha():
            out.append(rng.choice("ABCDEFGHJKLMNPRSTUVWXYZ") if char.isupper() else rng.choice("abcdefghjkmnprstuvwxyz"))
        else:
            out.append(char)
    return "".join(out)


def _new_digits(rng: random.Random, text: str) -> str:
    return re.sub(r"\d", lambda _: rng.choice(DIGITS), text)


def _fill_digits(template: str, digits: str) -> str:
    """`digits` written into the digit positions of `template`: "(811) 555-1234" keeps its punctuation."""
    new = iter(digits)
    return re.sub(r"\d", lambda _: next(new), template)


def _phone_digits(rng: random.Random, original: str) -> str:
    """As many digits as `original`, ending in a never-issued 555-01xx number; a country code is kept."""
    if len(original) < 7:
        return _new_digits(rng, original)
    prefix = original[:-7]  # "1" + area code, or just an area code
    prefix = prefix[:-3] + str(rng.randint(201, 989)) if len(prefix) >= 3 else _new_digits(rng, prefix)
    return prefix + f"55501{rng.randint(0, 99):02d}"


def phone_surrogate(rng: random.Random, value: str) -> str:
    extension = PHONE_EXTENSION.search(value)
    number, tail = (value[: extension.start()], value[extension.start() :]) if extension else (value, "")
    return _fill_digits(number, _phone_digits(rng, re.sub(r"\D", "", number))) + _new_digits(rng, tail)


def ssn_surrogate(rng: random.Random, value: str) -> str:
    if len(re.sub(r"\D", "", value)) != 9:
        return _new_digits(rng, value)
    return _fill_digits(value, f"9{rng.randint(0, 99):02d}{rng.randint(10, 99)}{rng.randint(1000, 9999)}")


def split_kept_words(value: str, kept: frozenset[str]) -> tuple[str, str]:
    """("UNION", " HOSP") for "UNION HOSP": the name, and the trailing kind and unit words kept as written.
    The first word is always the name, so "Memorial Hospital" still gets a surrogate name."""
    words = list(re.finditer(r"\S+", value))
    is_kept = [w.group().strip(".,").lower() in kept or UNIT_NUMBER.fullmatch(w.group().strip(".,")) for w in words]
    first_kept = len(words)
    while first_kept > 1 and is_kept[first_kept - 1]:
        first_kept -= 1
    cut = words[first_kept - 1].end() if words else len(value)
    return value[:cut], value[cut:]


def _name_index(names: tuple[str, ...], word: str) -> int | None:
    """0 for "Jan", "jan." or "January" in MONTHS; None when the word names none of them."""
    word = word.lower()
    return next((i for i, name in enumerate(names) if name.startswith(word)), None) if len(word) >= 3 else None


def _token_role(token: re.Match) -> str | None:
    """keep/month/weekday/day/year; "?" for a number only its neighbours place; None for a word no date has."""
    word, number = token["word"], token["number"]
    if token["time"] or (word and word.lower() in DATE_FILLER_WORDS):
        return "keep"
    if word:
        if _name_index(MONTHS, word) is not None:
            return "month"
        return "weekday" if _name_index(WEEKDAYS, word) is not None else None
    if token["ordinal"]:
        return "day"
    return "year" if len(number) == 4 or (len(number) == 2 and (token["apostrophe"] or int(number) > 31)) else "?"


def _date_roles(tokens: list[re.Match]) -> list[str] | None:
    """The role of each token of a date, numbers placed in US order; None when it reads as no date."""
    roles = [_token_role(t) for t in tokens]
    if None in roles:
        return None
    unknown = [i for i, role in enumerate(roles) if role == "?"]
    if "month" in roles:
        order = ["day", "year"]
    elif len(unknown) == 1 and "year" in roles:
        order = ["month"]  # "3/2019"
    elif len(unknown) >= 2:
        order = ["day", "month", "year"] if int(tokens[unknown[0]]["number"]) > 12 else ["month", "day", "year"]
    else:
        order = []  # a bare "12" is no date
    order = [role for role in order if role not in roles]
    if len(unknown) > len(order):
        return None
    for i, role in zip(unknown, order):
        roles[i] = role
    dated = [role for role in roles if role in ("year", "month", "day")]
    if len(dated) != len(set(dated)) or not (dated or "weekday" in roles) or set(dated) == {"year", "day"}:
        return None
    return roles


def _date_value(token: re.Match, role: str) -> int:
    if token["word"]:
        return _name_index(MONTHS, token["word"]) + 1
    number = int(token["number"])
    if role == "year" and len(token["number"]) == 2:
        return number + (2000 if number < 50 else 1900)  # the century only matters for 1900/2000 leap days
    return number


def _ordinal(day: int) -> str:
    return "th" if 11 <= day % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")


def _name_like(written: str, names: tuple[str, ...], index: int) -> str:
    """names[index] written like `written`: in full, or abbreviated ("Sept" stays four letters), in its case."""
    full = written.lower() in names
    name = names[index] if full else "sept" if names[index] == "september" and len(written) == 4 else names[index][:3]
    return match_case(written, name)


def _render_date_token(token: re.Match, role: str, new: date, pad: bool) -> str:
    if role == "year":
        year = f"{new.year % 100:02d}" if len(token["number"]) == 2 else f"{new.year:04d}"
        return (token["apostrophe"] or "") + year
    if token["word"]:
        return _name_like(token["word"], *((MONTHS, new.month - 1) if role == "month" else (WEEKDAYS, new.weekday())))
    number = new.month if role == "month" else new.day
    padded = len(token["number"]) == 2 and (token["number"].startswith("0") or pad)
    ordinal = match_case(token["ordinal"], _ordinal(number)) if token["ordinal"] else ""
    return (f"{number:02d}" if padded else str(number)) + ordinal


def _date_anchor(tokens: list[re.Match], roles: list[str]) -> date:
    """The day a date names; without year in 2000 (a leap year, so 2/29 stays valid), a month alone at its
    middle, a year alone at mid-year, a day alone in a 31-day month, a weekday alone in the week of 3 Jan 2000."""
    parts = {role: _date_value(t, role) for t, role in zip(tokens, roles) if role in ("year", "month", "day")}
    year, month, day = parts.get("year"), parts.get("month"), parts.get("day")
    if not parts:
        weekday = next(t["word"] for t, role in zip(tokens, roles) if role == "weekday")
        return date(2000, 1, 3 + _name_index(WEEKDAYS, weekday))  # 3 January 2000 was a Monday
    return date(year or 2000, month or (1 if day else 7), day or (15 if month else 1))


def _pads_month_and_day(tokens: list[re.Match], roles: list[str]) -> bool:
    """ "10/14/1982" was written by a system that pads ("03/04"); "Oct 12" and "10/4" were not."""
    numbers = [t["number"] for t, role in zip(tokens, roles) if role in ("month", "day") and t["number"]]
    numeric_month = any(role == "month" and t["number"] for t, role in zip(tokens, roles))
    return any(n.startswith("0") for n in numbers) or (numeric_month and all(len(n) == 2 for n in numbers))


def shift_date_text(value: str, shift: timedelta) -> str | None:
    """`value` moved by `shift` in its own format ("10/4", "OCT 12TH", "'92", "the 11th"); None if unreadable.
    dateutil parses these too, but gives no format back to write the shifted date in."""
    tokens = list(DATE_TOKEN.finditer(value))
    roles = _date_roles(tokens)
    if roles is None:
        return None
    try:
        new = _date_anchor(tokens, roles) + shift
    except (ValueError, OverflowError):  # "2/30/2019", or shifted before year 1
        return None
    pad = _pads_month_and_day(tokens, roles)
    pieces, cursor = [], 0
    for token, role in zip(tokens, roles):
        written = token.group() if role == "keep" else _render_date_token(token, role, new, pad)
        pieces += [value[cursor : token.start()], written]
        cursor = token.end()
    return "".join(pieces) + value[cursor:]


GENERIC_TOKENS = frozenset("http https www com org net edu gov example hospital medical center clinic health".split())


def _tokens(text: str) -> set[str]:
    """The identifying tokens of a value: names and long numbers, not 'org' or 'hospital'."""
    return {
        t for t in re.findall(r"[a-z0-9]+", text.lower())
        if t not in GENERIC_TOKENS and ((t.isalpha() and len(t) > 2) or (t.isdigit() and len(t) > 3))
    }


_FAKER: tuple[Faker, frozenset[str], frozenset[str]] | None = None


def _shared_faker() -> tuple[Faker, frozenset[str], frozenset[str]]:
    """One Faker for all patients (building one costs tens of milliseconds); reseeded per draw.
    Also its first names, and all its names (a name like "LI" is no pair of initials)."""
    global _FAKER
    if _FAKER is None:
        fake = Faker("en_US")
        person_provider = next(p for p in fake.providers if hasattr(p, "first_names"))
        first = frozenset(n.lower() for n in person_provider.first_names)
        _FAKER = (fake, first, first | {n.lower() for n in person_provider.last_names})
    return _FAKER


class PatientSurrogates:
    """Surrogates for one patient's PHI, never reusing a token of that patient's real PHI."""

    def __init__(self, key: bytes, patient_id: str, shift_range: tuple[int, int], real_values: set[str]) -> None:
        self.key = key
        self.patient_id = patient_id
        low, high = shift_range
        self.date_shift = timedelta(days=self._rng("date-shift", "").randint(low, high))
        self.forbidden = set().union(*(_tokens(v) for v in real_values)) if real_values else set()
        self.issued: dict[tuple[str, str], str] = {}  # (entity type, real value) -> surrogate
        self._faker, self._first_names, self._names = _shared_faker()

    def _rng(self, kind: str, value: str, attempt: int = 0) -> random.Random:
        digest = hmac.new(self.key, f"{self.patient_id}\x00{kind}\x00{value.lower()}\x00{attempt}".encode(), hashlib.sha256)
        return random.Random(int.from_bytes(digest.digest()[:8], "big"))

    def _draw(self, kind: str, value: str, make: Callable[[random.Random, Faker], str]) -> str:
        """A made value sharing no token with the patient's real PHI; only drawn parts go through here,
        since words kept from the original ("Rehab", "Drive") are in the real PHI by construction."""
        for attempt in range(20):
            rng = self._rng(kind, value, attempt)
            self._faker.seed_instance(rng.getrandbits(64))
            candidate = make(rng, self._faker)
            if not (_tokens(candidate) & self.forbidden):
                return candidate
        return f"<{kind}>"

    def person(self, value: str) -> str:
        """Each name part replaced in place: "Finch, Harold" keeps its comma, "J.D." becomes "K.M."."""
        return NAME_PART.sub(lambda m: self._name_part(m.group()), value)

    def _name_part(self, part: str) -> str:
        if part.lower() in NAME_TITLES:
            return part
        if len(part) == 1 or (len(part) <= 3 and part.isupper() and part.lower() not in self._names):
            # Each letter another one: "J" -> "K", "JD" -> "KM".
            drawn = self._draw("initial", part, lambda r, f: "".join(r.choice(INITIALS.replace(c.upper(), "")) for c in part))
        elif part[1] == "'":  # O'Neil, D'Angelo
            drawn = self._draw("name", part, lambda r, f: part[:2] + f.last_name())
        elif part.lower() in self._first_names:
            drawn = self._draw("name", part, lambda r, f: f.first_name())
        else:
            drawn = self._draw("name", part, lambda r, f: f.last_name())
        return match_case(part, drawn)

    def named_place(self, kind: str, value: str, kept: frozenset[str], upper_note: bool) -> str:
        """A surname for the place's name; its kind and unit words stay ("UNION HOSP" -> "<SURNAME> HOSP")."""
        name, kept_words = split_kept_words(value, kept)
        return match_case(name, self._draw(kind, name, lambda r, f: f.last_name()), upper_note) + kept_words

    def street(self, value: str, upper_note: bool) -> str:
        number = re.match(r"\s*\d+[A-Za-z]?\s*", value).group()
        new_number = self._draw("street-number", value, lambda r, f: _new_digits(r, number))
        return new_number + self.named_place("street", value[len(number) :], STREET_WORDS, upper_note)

    def shift_date(self, value: str) -> str | None:
        return shift_date_text(value, self.date_shift)

    def surrogate(self, entity_type: str, value: str, note: str = "") -> str:
        """The surrogate for `value`; `note`, the text it came from, gives the case to values without letters."""
        replacement = self._surrogate(entity_type, value, is_upper_case_note(note))
        self.issued[(entity_type, value)] = replacement
        return replacement

    def _surrogate(self, entity_type: str, value: str, upper_note: bool) -> str:
        # Emails and URLs are case-blind, so theirs follows the note unless the value is upper case.
        web_case = str.upper if value.isupper() or upper_note else str.lower
        if entity_type == "PERSON":
            return self.person(value)
        if entity_type == "DATE":
            return self.shift_date(value) or "<DATE>"
        if entity_type == "AGE":
            # HIPAA protects ages over 89 only; a younger age flagged as PHI keeps its value.
            return AGE_OVER_89 if any(int(n) > 89 for n in re.findall(r"\d+", value)) else value
        if entity_type == "PHONE_NUMBER":
            return self._draw("phone", value, lambda r, f: phone_surrogate(r, value))
        if entity_type == "US_SSN":
            return self._draw("ssn", value, lambda r, f: ssn_surrogate(r, value))
        if entity_type == "EMAIL_ADDRESS":
            return web_case(self._draw("email", value, lambda r, f: f"{f.first_name()}.{f.last_name()}@example.org"))
        if entity_type == "URL":
            prefix = re.match(r"(?i)(https?://)?(www\.)?", value).group()
            return web_case(self._draw("url", value, lambda r, f: f"{prefix}example.org/{_scramble(r, 'aaaa0000')}"))
        if entity_type == "IP_ADDRESS":
            return self._draw("ip", value, lambda r, f: f"{r.choice(SURROGATE_IP_BLOCKS)}.{r.randint(1, 254)}")
        if entity_type == "HOSPITAL":
            return self.named_place("hospital", value, FACILITY_WORDS, upper_note)
        if entity_type == "LOCATION":
            if "," in value:  # "7253 Cole Road, North Williamburgh, WV 13613": each part in its own form
                return ",".join(re.sub(r"\S(?:.*\S)?", lambda m: self._surrogate("LOCATION", m.group(), upper_note), part)
                                for part in value.split(","))
            state_zip = STATE_AND_ZIP.fullmatch(value)
            if state_zip:  # the state stays (it is no identifier under HIPAA), the ZIP does not
                return value[: state_zip.start("zip")] + self._draw("zip", value, lambda r, f: _new_digits(r, state_zip["zip"]))
            if value.strip().replace("-", "").isdigit():
                return self._draw("zip", value, lambda r, f: _new_digits(r, value))
            if re.match(r"\s*\d", value):
                return self.street(value, upper_note)
            return match_case(value, self._draw("city", value, lambda r, f: f.city()), upper_note)
        return self._draw(entity_type.lower(), value, lambda r, f: _scramble(r, value))


def _fernet(passphrase: str, salt: bytes):
    from cryptography.fernet import Fernet
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

    derived = PBKDF2HMAC(algorithm=hashes.SHA256(), length=32, salt=salt, iterations=390_000).derive(passphrase.encode())
    return Fernet(base64.urlsafe_b64encode(derived))


def write_surrogate_map(path: Path, surrogates: dict[str, PatientSurrogates], passphrase: str) -> int:
    """Encrypt {patient: [[type, real, surrogate], ...]} with the data owner's passphrase; returns entries."""
    mapping = {patient: [[t, real, fake] for (t, real), fake in sorted(s.issued.items())] for patient, s in surrogates.items()}
    salt = secrets.token_bytes(16)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(salt + _fernet(passphrase, salt).encrypt(json.dumps(mapping).encode()))
    path.chmod(0o600)
    return sum(len(entries) for entries in mapping.values())


def read_surrogate_map(path: Path, passphrase: str) -> dict[str, list[list[str]]]:
    from cryptography.fernet import InvalidToken

    blob = path.read_bytes()
    try:
        return json.loads(_fernet(passphrase, blob[:16]).decrypt(blob[16:]))
    except InvalidToken:
        raise ValueError(f"{path}: wrong key for the surrogate map") from None
