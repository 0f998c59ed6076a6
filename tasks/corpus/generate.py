"""Deterministic synthetic clinical notes carrying every HIPAA text category of PHI, with gold spans.

The notes exist to exercise the pipeline end to end: the de-identifier must remove every gold
span, and the experts learn to write the one-sentence `target`, which carries no PHI.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path

from faker import Faker

from tasks.corpus.clinical_content import (
    CONDITIONS,
    DEVICES,
    HEALTH_PLANS,
    HOSPITAL_PATTERNS,
    RELATIONS,
    STREET_SUFFIXES,
)

NOTES_FILE = "notes.jsonl"
GOLD_FILE = "gold_phi.jsonl"


@dataclass
class PhiSpan:
    start: int
    end: int
    entity_type: str
    text: str


@dataclass
class SyntheticNote:
    note_id: str
    patient_id: str
    specialty: str
    text: str
    target: str
    spans: list[PhiSpan] = field(default_factory=list)


class NoteBuilder:
    """Appends text and PHI values while recording where each PHI value lands."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.length = 0
        self.spans: list[PhiSpan] = []

    def text(self, literal: str) -> NoteBuilder:
        self.parts.append(literal)
        self.length += len(literal)
        return self

    def phi(self, value: str, entity_type: str) -> NoteBuilder:
        self.spans.append(PhiSpan(self.length, self.length + len(value), entity_type, value))
        return self.text(value)

    def build(self) -> str:
        return "".join(self.parts)


@dataclass
class Patient:
    patient_id: str
    sex: str
    first: str
    last: str
    birth: date
    mrn: str
    ssn: str
    account: str
    plan: str
    plan_id: str
    street: str
    city: str
    state: str
    zip_code: str
    phone: str
    email: str
    relation: str
    relative_first: str
    relative_phone: str


def _digits(rng: random.Random, count: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(count))


def _phone(rng: random.Random) -> str:
    # Area and exchange codes from 201-989, never the fictional 555 exchange our surrogates use.
    exchange = rng.choice([n for n in range(201, 990) if n != 555])
    return f"({rng.randint(201, 989)}) {exchange}-{_digits(rng, 4)}"


def _ssn(rng: random.Random) -> str:
    area = rng.choice([n for n in range(1, 900) if n != 666])
    return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


def _format_date(day: date, style: int) -> str:
    if style == 0:
        return day.strftime("%m/%d/%Y")
    if style == 1:
        return day.isoformat()
    return f"{day.strftime('%B')} {day.day}, {day.year}"


def _make_patient(index: int, fake: Faker, rng: random.Random) -> Patient:
    sex = rng.choice(["male", "female"])
    first = fake.first_name_male() if sex == "male" else fake.first_name_female()
    last = fake.last_name()
    relation = rng.choice(RELATIONS[sex])
    relative_first = fake.first_name_female() if relation in ("wife", "daughter", "sister") else fake.first_name_male()
    old = rng.random() < 0.12
    age_years = rng.randint(90, 99) if old else rng.randint(19, 85)
    birth = date(2024, 1, 1) - timedelta(days=int(age_years * 365.25) + rng.randint(0, 300))
    return Patient(
        patient_id=f"P{index:04d}",
        sex=sex,
        first=first,
        last=last,
        birth=birth,
        mrn=_digits(rng, rng.choice([7, 8])),
        ssn=_ssn(rng),
        account=_digits(rng, 10),
        plan=rng.choice(HEALTH_PLANS),
        plan_id=f"{rng.choice('ABCDEFGHJKLMNPRSTUVWXYZ')}{rng.choice('ABCDEFGHJKLMNPRSTUVWXYZ')}{_digits(rng, 9)}",
        street=f"{rng.randint(10, 9899)} {fake.last_name()} {rng.choice(STREET_SUFFIXES)}",
        city=fake.city(),
        state=fake.state_abbr(include_territories=False),
        zip_code=_digits(rng, 5),
        phone=_phone(rng),
        email=f"{first.lower()}.{last.lower()}{rng.randint(1, 99)}@{fake.free_email_domain()}",
        relation=relation,
        relative_first=relative_first,
        relative_phone=_phone(rng),
    )


def _age_on(birth: date, day: date) -> int:
    return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))


def _hospital(fake: Faker, rng: random.Random) -> str:
    return rng.choice(HOSPITAL_PATTERNS).format(city=fake.city(), last=fake.last_name())


def _compose(note_id: str, patient: Patient, specialty: str, fake: Faker, rng: random.Random) -> SyntheticNote:
    condition = rng.choice(CONDITIONS[specialty])
    sex = patient.sex
    pronoun, possessive = ("He", "his") if sex == "male" else ("She", "her")
    title = "Mr." if sex == "male" else rng.choice(["Ms.", "Mrs."])
    visit = date(2019, 1, 1) + timedelta(days=rng.randint(0, 1800))
    age = _age_on(patient.birth, visit)
    date_style = rng.randint(0, 2)
    hospital = _hospital(fake, rng)
    attending_first, attending_last = fake.first_name(), fake.last_name()
    consultant_last = fake.last_name()
    credential = rng.choice(["MD", "DO", "NP", "PA"])

    b = NoteBuilder()
    b.phi(hospital, "HOSPITAL").text(f"\n{specialty.upper()} NOTE\n\n")
    b.text("PATIENT: ").phi(f"{patient.first} {patient.last}", "PATIENT")
    b.text("    MRN: ").phi(patient.mrn, "MRN")
    b.text("    DOB: ").phi(_format_date(patient.birth, date_style), "DATE").text("\n")
    b.text("DATE OF SERVICE: ").phi(_format_date(visit, date_style), "DATE")
    b.text("    ACCOUNT #: ").phi(patient.account, "ACCOUNT").text("\n")
    b.text("ADDRESS: ").phi(patient.street, "STREET").text(", ").phi(patient.city, "CITY")
    b.text(f", {patient.state} ").phi(patient.zip_code, "ZIP").text("\n")
    b.text("PHONE: ").phi(patient.phone, "PHONE")
    if rng.random() < 0.5:
        b.text("    FAX: ").phi(_phone(rng), "FAX")
    b.text("    EMAIL: ").phi(patient.email, "EMAIL").text("\n")
    if rng.random() < 0.7:
        b.text("SSN: ").phi(patient.ssn, "SSN").text("    ")
    b.text(f"INSURANCE: {patient.plan}, member ID ").phi(patient.plan_id, "HEALTH_PLAN").text("\n")
    b.text("ATTENDING: Dr. ").phi(f"{attending_first} {attending_last}", "CLINICIAN")
    b.text(f", {credential} (license ").phi(f"{rng.choice('ABCDG')}{_digits(rng, 6)}", "LICENSE").text(")\n\n")

    b.text("HISTORY OF PRESENT ILLNESS:\n").text(f"{title} ").phi(patient.last, "PATIENT").text(" is a ")
    # HIPAA treats only ages over 89 as identifying.
    (b.phi(str(age), "AGE") if age > 89 else b.text(str(age))).text(f"-year-old {'man' if sex == 'male' else 'woman'} who presents with ")
    b.text(f"{condition['complaint']}. ")
    b.text(condition["history"].format(pronoun=pronoun) + ". ")
    if rng.random() < 0.6:
        prior = visit - timedelta(days=rng.randint(20, 400))
        b.text(f"{pronoun} was previously evaluated at ").phi(_hospital(fake, rng), "HOSPITAL").text(" on ")
        b.phi(_format_date(prior, date_style), "DATE").text(".")
    b.text("\n\nPAST MEDICAL HISTORY:\n").text("; ".join(condition["pmh"]).capitalize() + ".\n\n")
    b.text("MEDICATIONS:\n")
    for number, medication in enumerate(condition["meds"], start=1):
        b.text(f"{number}. {medication.capitalize()}.\n")
    b.text("\nSOCIAL HISTORY:\n").text(f"{pronoun} lives in ").phi(patient.city, "CITY")
    b.text(f" with {possessive} {patient.relation} ").phi(patient.relative_first, "RELATIVE")
    b.text(", who can be reached at ").phi(patient.relative_phone, "PHONE").text(".\n\n")
    b.text("PHYSICAL EXAMINATION:\n")
    b.text(
        f"Vitals: BP {rng.randint(122, 158)}/{rng.randint(70, 88)}, HR {rng.randint(62, 88)}, "
        f"T 36.{rng.randint(5, 9)} C, RR {rng.randint(12, 20)}.\n{condition['exam']}\n\n"
    )
    b.text("ASSESSMENT AND PLAN:\n").text(f"{condition['assessment']}. {condition['plan']} ")
    if rng.random() < 0.4:
        device = rng.choice(DEVICES)
        b.text(f"Interrogation of {possessive} {device} (serial ").phi(
            f"SN-{rng.choice('ABCXYZ')}{_digits(rng, 7)}", "DEVICE_ID"
        ).text(") was unremarkable. ")
    if rng.random() < 0.5:
        b.text("Results are posted to the patient portal at ").phi(
            f"https://portal.{patient.last.lower()}-health.org/chart/{_digits(rng, 6)}", "URL"
        ).text(". ")
    if rng.random() < 0.3:
        b.text("Home monitor uploads from ").phi(
            f"{rng.randint(11, 99)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}", "IP"
        ).text(". ")
    b.text("Follow up with Dr. ").phi(consultant_last, "CLINICIAN").text(" in two weeks.\n\n")
    signed = visit + timedelta(days=rng.randint(0, 2))
    b.text("Electronically signed by ").phi(f"{attending_first} {attending_last}", "CLINICIAN")
    b.text(f", {credential} on ").phi(_format_date(signed, date_style), "DATE").text("\n")

    text = b.build()
    casing = rng.random()
    if casing < 0.2:
        text = text.upper()
    elif casing < 0.32:
        text = text.lower()
    spans = [PhiSpan(s.start, s.end, s.entity_type, text[s.start : s.end]) for s in b.spans]

    age_phrase = f"A {age}-year-old" if age <= 89 else "An elderly"
    sex_word = "man" if sex == "male" else "woman"
    target = condition["summary"].format(age_phrase=age_phrase, sex=sex_word)
    target = target[0].upper() + target[1:]
    return SyntheticNote(note_id, patient.patient_id, specialty, text, target, spans)


def generate_corpus(notes: int, patients: int, seed: int) -> list[SyntheticNote]:
    rng = random.Random(seed)
    fake = Faker("en_US")
    fake.seed_instance(seed)
    people = [_make_patient(i + 1, fake, rng) for i in range(min(patients, notes))]
    specialties = sorted(CONDITIONS)
    corpus = []
    for index in range(notes):
        patient = people[index % len(people)] if index < len(people) else rng.choice(people)
        # Obstetrics and gynecology notes only for female patients; others round-robin.
        choices = [s for s in specialties if patient.sex == "female" or s != "Obstetrics / Gynecology"]
        specialty = choices[index % len(choices)]
        corpus.append(_compose(f"N{index + 1:05d}", patient, specialty, fake, rng))
    return corpus


def write_corpus(corpus: list[SyntheticNote], output_dir: Path) -> dict:
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / NOTES_FILE, "w") as notes, open(output_dir / GOLD_FILE, "w") as gold:
        for note in corpus:
            record = {k: v for k, v in asdict(note).items() if k != "spans"}
            notes.write(json.dumps(record) + "\n")
            gold.write(json.dumps({"note_id": note.note_id, "spans": [asdict(s) for s in note.spans]}) + "\n")
    return {
        "notes": len(corpus),
        "patients": len({n.patient_id for n in corpus}),
        "specialties": len({n.specialty for n in corpus}),
        "phi_spans": sum(len(n.spans) for n in corpus),
    }


def read_gold_spans(output_dir: Path) -> dict[str, list[PhiSpan]]:
    gold = {}
    with open(output_dir / GOLD_FILE) as handle:
        for line in handle:
            record = json.loads(line)
            gold[record["note_id"]] = [PhiSpan(**span) for span in record["spans"]]
    return gold
