"""Realistic, consistent surrogates for detected PHI.

A surrogate is a pure function of (secret key, patient, entity type, original value), so the same
real name becomes the same surrogate in every note of a patient and no real-to-surrogate table
has to be stored. Structured surrogates come from ranges that are never issued (SSN area 9xx,
555-01xx phone numbers, example.org, documentation IP blocks), which lets the residual-PHI gate
tell a surrogate from a leaked identifier.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import re
import secrets
from datetime import datetime, timedelta
from pathlib import Path

from faker import Faker

KEY_FILE = Path("data/raw/.deid_key")  # inside the PHI zone; never tracked by git or pushed by DVC
MAP_FILE = Path("data/raw/surrogate_map.enc")  # likewise; written only when the data owner sets a map key
MAP_KEY_ENV = "MEDLORA_SURROGATE_MAP_KEY"
AGE_OVER_89 = "90+"
SURROGATE_IP_BLOCKS = ("192.0.2", "198.51.100", "203.0.113")
DATE_FORMATS = ("%m/%d/%Y", "%m-%d-%Y", "%m.%d.%Y", "%m/%d/%y", "%m-%d-%y", "%Y-%m-%d",
                "%B %d, %Y", "%B %d %Y", "%b %d, %Y", "%b. %d, %Y", "%b %d %Y", "%d %B %Y", "%d %b %Y",
                "%B %Y", "%b %Y")
FACILITY_WORDS = re.compile(r"(?i)(medical center|health center|hospital|clinic|infirmary|health system|healthcare)\s*$")


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


def match_case(original: str, surrogate: str) -> str:
    letters = [c for c in original if c.isalpha()]
    if letters and all(c.isupper() for c in letters):
        return surrogate.upper()
    if letters and all(c.islower() for c in letters):
        return surrogate.lower()
    return surrogate


def _scramble(rng: random.Random, value: str) -> str:
    """Format-preserving random identifier: digits stay digits, letters stay letters."""
    out = []
    for char in value:
        if char.isdigit():
            out.append(rng.choice("0123456789"))
        elif char.isalpha():
            out.append(rng.choice("ABCDEFGHJKLMNPRSTUVWXYZ") if char.isupper() else rng.choice("abcdefghjkmnprstuvwxyz"))
        else:
            out.append(char)
    return "".join(out)


GENERIC_TOKENS = frozenset("http https www com org net edu gov example hospital medical center clinic health".split())


def _tokens(text: str) -> set[str]:
    """The identifying tokens of a value: names and long numbers, not 'org' or 'hospital'."""
    return {
        t for t in re.findall(r"[a-z0-9]+", text.lower())
        if t not in GENERIC_TOKENS and ((t.isalpha() and len(t) > 2) or (t.isdigit() and len(t) > 3))
    }


_FAKER: tuple[Faker, frozenset[str]] | None = None


def _shared_faker() -> tuple[Faker, frozenset[str]]:
    """One Faker for all patients (building one costs tens of milliseconds); reseeded per draw."""
    global _FAKER
    if _FAKER is None:
        fake = Faker("en_US")
        person_provider = next(p for p in fake.providers if hasattr(p, "first_names"))
        _FAKER = (fake, frozenset(n.lower() for n in person_provider.first_names))
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
        self._faker, self._first_names = _shared_faker()

    def _rng(self, kind: str, value: str, attempt: int = 0) -> random.Random:
        digest = hmac.new(self.key, f"{self.patient_id}\x00{kind}\x00{value.lower()}\x00{attempt}".encode(), hashlib.sha256)
        return random.Random(int.from_bytes(digest.digest()[:8], "big"))

    def _draw(self, kind: str, value: str, make) -> str:
        for attempt in range(20):
            rng = self._rng(kind, value, attempt)
            self._faker.seed_instance(rng.getrandbits(64))
            candidate = make(rng, self._faker)
            if not (_tokens(candidate) & self.forbidden):
                return candidate
        return f"<{kind}>"

    def person(self, value: str) -> str:
        parts = []
        for token in re.findall(r"[A-Za-z][A-Za-z'\-]*\.?", value):
            if len(token.rstrip(".")) == 1:
                parts.append(self._draw("initial", token, lambda r, f: r.choice("ABCDEFGHJKLMNPRSTW") + "."))
            elif token.lower() in self._first_names:
                parts.append(self._draw("name", token, lambda r, f: f.first_name()))
            else:
                parts.append(self._draw("name", token, lambda r, f: f.last_name()))
        return match_case(value, " ".join(parts))

    def shift_date(self, value: str) -> str | None:
        cleaned = re.sub(r"(?<=\d)(st|nd|rd|th)\b", "", value.strip(), flags=re.I)
        for fmt in DATE_FORMATS:
            try:
                parsed = datetime.strptime(cleaned, fmt)
            except ValueError:
                continue
            shifted = (parsed + self.date_shift).date()
            return match_case(value, shifted.strftime(fmt))
        return None

    def surrogate(self, entity_type: str, value: str) -> str:
        replacement = self._surrogate(entity_type, value)
        self.issued[(entity_type, value)] = replacement
        return replacement

    def _surrogate(self, entity_type: str, value: str) -> str:
        if entity_type == "PERSON":
            return self.person(value)
        if entity_type == "DATE":
            return self.shift_date(value) or "<DATE>"
        if entity_type == "AGE":
            # HIPAA protects ages over 89 only; a younger age flagged as PHI keeps its value.
            return AGE_OVER_89 if any(int(n) > 89 for n in re.findall(r"\d+", value)) else value
        if entity_type == "PHONE_NUMBER":
            return self._draw("phone", value, lambda r, f: f"({r.randint(201, 989)}) 555-01{r.randint(0, 99):02d}")
        if entity_type == "US_SSN":
            return self._draw("ssn", value, lambda r, f: f"9{r.randint(0, 99):02d}-{r.randint(10, 99)}-{r.randint(1000, 9999)}")
        if entity_type == "EMAIL_ADDRESS":
            return match_case(value, self._draw("email", value, lambda r, f: f"{f.first_name()}.{f.last_name()}@example.org".lower()))
        if entity_type == "URL":
            return self._draw("url", value, lambda r, f: f"https://example.org/{_scramble(r, 'aaaa0000')}")
        if entity_type == "IP_ADDRESS":
            return self._draw("ip", value, lambda r, f: f"{r.choice(SURROGATE_IP_BLOCKS)}.{r.randint(1, 254)}")
        if entity_type == "HOSPITAL":
            suffix = FACILITY_WORDS.search(value)
            words = suffix.group(1) if suffix else "Hospital"
            return match_case(value, self._draw("hospital", value, lambda r, f: f"{f.last_name()} {words.title()}"))
        if entity_type == "LOCATION":
            if re.match(r"\s*\d", value) and not value.strip().isdigit():
                return match_case(value, self._draw("street", value, lambda r, f: f"{r.randint(10, 9899)} {f.last_name()} {r.choice(['Street', 'Avenue', 'Road', 'Lane'])}"))
            if value.strip().replace("-", "").isdigit():
                return self._draw("zip", value, lambda r, f: _scramble(r, value))
            return match_case(value, self._draw("city", value, lambda r, f: f.city()))
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
