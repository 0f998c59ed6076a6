"""Surrogates keep the original value's form: punctuation, suffix words, letter case and date format."""

import re
from datetime import date, datetime, timedelta

import pandas as pd
import pytest

from tasks.deidentify.engine import PhiSpan, deidentify_notes, replace_spans
from tasks.deidentify.surrogates import PatientSurrogates, is_upper_case_note, shift_date_text
from tasks.validate.residual_phi import RESIDUAL_PHI_PATTERNS

KEY = b"test-key-0123456789"
PHONE_FORMS = ["(811) 555-1234", "811) 555-1234", "(811)555-1234", "811-555-1234", "811.555.1234", "811 555 1234",
               "8115551234", "+1 811 555 1234", "1-811-555-1234", "1 (811) 555-1234", "555-1234", "555.1234",
               "811-555-1234 x123", "(811) 555-1234 ext. 45", "811-555-1234x7"]
SURNAME = r"[A-Z][A-Za-z]+"


def surrogates(patient: str = "p1", real: set[str] = frozenset()) -> PatientSurrogates:
    return PatientSurrogates(KEY, patient, (-365, -30), set(real))


def skeleton(value: str) -> str:
    return re.sub(r"\d", "9", value)


def replace_one(people: PatientSurrogates, text: str, start: int, end: int, entity: str) -> str:
    return replace_spans(text, [PhiSpan(start, end, entity, 1.0)], lambda span, value: people.surrogate(span.entity_type, value))


def test_phone_surrogate_keeps_parentheses_only_where_the_original_had_them():
    people = surrogates()
    assert re.fullmatch(r"\(\d{3}\) 555-01\d\d", people.surrogate("PHONE_NUMBER", "(811) 555-1234"))
    # The detector left the opening parenthesis in the note: the surrogate must not add its own.
    text = "PHONE: (811) 555-1234"
    replaced = replace_one(people, text, 8, len(text), "PHONE_NUMBER")
    assert re.fullmatch(r"PHONE: \(\d{3}\) 555-01\d\d", replaced), replaced


@pytest.mark.parametrize("value", PHONE_FORMS)
def test_phone_surrogate_keeps_punctuation_grouping_and_extension_in_the_never_issued_range(value):
    surrogate = surrogates().surrogate("PHONE_NUMBER", value)
    assert skeleton(surrogate) == skeleton(value) and surrogate != value
    number = re.sub(r"\D", "", re.split(r"x|ext", surrogate)[0])
    assert number[-7:-2] == "55501", surrogate
    if value.startswith(("+1", "1-", "1 ")):
        assert surrogate[:2] == value[:2]


def test_phone_surrogates_are_never_matched_by_the_residual_phi_gate():
    for patient in range(40):
        for value in PHONE_FORMS:
            surrogate = surrogates(f"p{patient}").surrogate("PHONE_NUMBER", value)
            assert not re.search(RESIDUAL_PHI_PATTERNS["phone"], surrogate), surrogate
            assert not re.search(RESIDUAL_PHI_PATTERNS["phone"], f"call {surrogate} now"), surrogate


def test_ssn_surrogate_keeps_its_format_and_area_9xx():
    people = surrogates()
    assert re.fullmatch(r"9\d\d-\d\d-\d{4}", people.surrogate("US_SSN", "123-45-6789"))
    assert re.fullmatch(r"9\d{8}", people.surrogate("US_SSN", "123456789"))


def test_hospital_surrogate_adds_no_facility_word_the_original_lacked():
    people = surrogates()
    assert re.fullmatch(SURNAME, people.surrogate("HOSPITAL", "Watson"))
    # Regression: "Watson" of "Watson Hospital" typed HOSPITAL became "<surname> Hospital Hospital".
    text = "Transferred to Watson Hospital today."
    replaced = replace_one(people, text, 15, 21, "HOSPITAL")
    assert re.fullmatch(rf"Transferred to {SURNAME} Hospital today\.", replaced), replaced


@pytest.mark.parametrize(("value", "form"), [
    ("Mercy Hospital", rf"{SURNAME} Hospital"),
    ("UNION HOSP", r"[A-Z]+ HOSP"),
    ("kernan hosp", r"[a-z]+ hosp"),
    ("Baltimore Rehab", rf"{SURNAME} Rehab"),
    ("Harford Memorial", rf"{SURNAME} Memorial"),
    ("Mercy Med Ctr", rf"{SURNAME} Med Ctr"),
    ("Dixon Memorial Hospital", rf"{SURNAME} Memorial Hospital"),
    ("Johns Hopkins Medical Center", rf"{SURNAME} Medical Center"),
    ("Quartermain 2", rf"{SURNAME} 2"),
    ("Weinberg 4C", rf"{SURNAME} 4C"),
])
def test_hospital_and_unit_surrogates_keep_the_original_suffix_words(value, form):
    surrogate = surrogates(real={value}).surrogate("HOSPITAL", value)
    assert re.fullmatch(form, surrogate), surrogate
    assert surrogate.split()[0].lower() != value.split()[0].lower()


def test_a_facility_name_gets_the_same_surrogate_name_in_every_written_form():
    people = surrogates()
    names = {people.surrogate("HOSPITAL", v).split()[0].lower() for v in ("Mercy Hospital", "Mercy", "MERCY HOSP")}
    assert len(names) == 1


def test_street_surrogate_keeps_its_street_kind_and_unit():
    people = surrogates(real={"1939 Jones Drive"})
    assert re.fullmatch(rf"\d{{4}} {SURNAME} Drive", people.surrogate("LOCATION", "1939 Jones Drive"))
    assert re.fullmatch(r"\d{4} [A-Z]+ DRIVE Apt 4B", people.surrogate("LOCATION", "1939 JONES DRIVE Apt 4B"))
    assert re.fullmatch(r"\d{5}-\d{4}", people.surrogate("LOCATION", "21201-1234"))


@pytest.mark.parametrize(("entity", "value", "form"), [
    ("PERSON", "HAROLD FINCH", r"[A-Z]+ [A-Z]+"),
    ("PERSON", "harold finch", r"[a-z]+ [a-z]+"),
    ("PERSON", "Harold Finch", rf"{SURNAME} {SURNAME}"),
    ("PERSON", "McDonald", SURNAME),
    ("LOCATION", "EAST SCOTTVILLE", r"[A-Z ]+"),
    ("LOCATION", "baltimore", r"[a-z ]+"),
    ("HOSPITAL", "MERCY HOSPITAL", r"[A-Z]+ HOSPITAL"),
    ("EMAIL_ADDRESS", "JDOE@GMAIL.COM", r"[A-Z]+\.[A-Z]+@EXAMPLE\.ORG"),
])
def test_surrogate_follows_the_original_letter_case(entity, value, form):
    surrogate = surrogates().surrogate(entity, value)
    assert re.fullmatch(form, surrogate) and surrogate.isupper() == value.isupper(), surrogate


def test_values_without_case_information_follow_an_upper_case_note():
    upper_note, mixed_note = "PT RESTING COMFORTABLY. DAUGHTER EMAILED jdoe@gmail.com", "Pt resting. Daughter emailed."
    assert is_upper_case_note(upper_note) and not is_upper_case_note(mixed_note)
    people = surrogates()
    email = people.surrogate("EMAIL_ADDRESS", "jdoe@gmail.com", note=upper_note)
    assert email.isupper() and email.endswith("@EXAMPLE.ORG")
    assert people.surrogate("EMAIL_ADDRESS", "jdoe@gmail.com", note=mixed_note) == email.lower()
    assert people.surrogate("URL", "www.portal.org/x", note=upper_note).startswith("WWW.EXAMPLE.ORG/")
    assert not people.surrogate("PERSON", "Harold", note=upper_note).isupper()  # its own letters say its case


def test_deidentified_upper_case_note_gets_upper_case_surrogates(deid_params):
    text = "PT RESTING COMFORTABLY. WIFE REACHABLE AT jdoe@gmail.com FOR UPDATES."
    notes = pd.DataFrame([{"note_id": "1", "patient_id": "p1", "text": text, "target": "t", "specialty": "s", "expert": "e",
                           "source_row": 1}])
    out, _ = deidentify_notes(notes, deid_params, KEY, progress=False)
    assert re.search(r"AT [A-Z]+\.[A-Z]+@EXAMPLE\.ORG FOR", out["text"][0]), out["text"][0]


SHIFT = timedelta(days=-40)


@pytest.mark.parametrize(("value", "shifted"), [
    ("10/4", "8/25"), ("10-4", "8-25"), ("03/04", "01/24"), ("3/4", "1/24"), ("12/04", "10/25"),
])
def test_month_day_dates_shift_keeping_separator_and_zero_padding(value, shifted):
    assert shift_date_text(value, SHIFT) == shifted


@pytest.mark.parametrize(("value", "shifted"), [
    ("7/22/92", "6/12/92"), ("10/14/1982", "09/04/1982"), ("2019-03-04", "2019-01-23"), ("01/05/2020", "11/26/2019"),
    ("10/14/1982 14:30", "09/04/1982 14:30"), ("1/15/00", "12/6/99"),
])
def test_full_numeric_dates_shift_keeping_year_width_and_order(value, shifted):
    assert shift_date_text(value, SHIFT) == shifted


@pytest.mark.parametrize(("value", "shifted"), [
    ("Oct 12", "Sep 2"), ("OCT 12TH", "SEP 2ND"), ("12 Oct", "2 Sep"), ("October 12, 2019", "September 2, 2019"),
    ("oct. 3rd", "aug. 24th"), ("Monday, Oct 12, 2020", "Wednesday, Sep 2, 2020"),
])
def test_dates_with_month_names_shift_keeping_name_style_ordinal_and_case(value, shifted):
    assert shift_date_text(value, SHIFT) == shifted


@pytest.mark.parametrize(("value", "shift", "shifted"), [
    ("March 2019", SHIFT, "February 2019"), ("Jan 2019", SHIFT, "Dec 2018"),
    ("March", SHIFT, "February"), ("sept.", SHIFT, "aug."), ("SEPT", timedelta(days=5), "SEPT"),
    ("1992", timedelta(days=-100), "1992"), ("1992", timedelta(days=-200), "1991"), ("'92", timedelta(days=-200), "'91"),
    ("the 11th", SHIFT, "the 2nd"), ("the 11th", timedelta(days=-3), "the 8th"),
])
def test_partial_dates_shift_from_the_middle_of_what_they_name(value, shift, shifted):
    assert shift_date_text(value, shift) == shifted


def test_shifted_dates_stay_valid_calendar_dates_with_intervals_kept():
    for shift in (timedelta(days=-30), timedelta(days=-59), timedelta(days=-365)):
        for day in pd.date_range("2019-01-01", "2020-12-31"):
            shifted = datetime.strptime(shift_date_text(day.strftime("%m/%d/%Y"), shift), "%m/%d/%Y")
            assert shifted == day + shift
        assert re.fullmatch(r"\d\d?/\d\d?", shift_date_text("2/29", shift))


def test_a_patients_dates_shift_by_the_same_days_whatever_their_format():
    people = surrogates()
    numeric, named = people.shift_date("10/12/2019"), people.shift_date("October 12, 2019")
    expected = datetime(2019, 10, 12) + people.date_shift
    assert datetime.strptime(numeric, "%m/%d/%Y") == datetime.strptime(named, "%B %d, %Y") == expected
    assert datetime.strptime(people.shift_date("2019-10-22"), "%Y-%m-%d").date() - date(2019, 10, 22) == people.date_shift


@pytest.mark.parametrize("value", ["12", "Christmas", "13/45/2000", "2/30/2019", "the 11th 2019"])
def test_only_unreadable_dates_become_a_tag(value):
    assert surrogates().surrogate("DATE", value) == "<DATE>"


@pytest.mark.parametrize(("value", "form"), [
    ("J.", r"[A-Z]\."), ("J", r"[A-Z]"), ("JD", r"[A-Z]{2}"), ("J.D.", r"[A-Z]\.[A-Z]\."), ("j.", r"[a-z]\."),
])
def test_initials_become_other_initials_in_the_same_form(value, form):
    surrogate = surrogates().surrogate("PERSON", value)
    assert re.fullmatch(form, surrogate), surrogate
    assert all(a.upper() != b.upper() for a, b in zip(re.findall(r"[A-Za-z]", value), re.findall(r"[A-Za-z]", surrogate)))


def test_name_surrogate_keeps_hyphen_apostrophe_comma_and_title():
    people = surrogates()
    assert re.fullmatch(rf"{SURNAME}-{SURNAME} O'{SURNAME}", people.surrogate("PERSON", "Mary-Ann O'Neil"))
    assert re.fullmatch(rf"{SURNAME}, {SURNAME}", people.surrogate("PERSON", "Finch, Harold"))
    assert re.fullmatch(rf"Dr\. {SURNAME}", people.surrogate("PERSON", "Dr. Root"))
    assert people.surrogate("PERSON", "J. Finch").split()[0] == people.surrogate("PERSON", "J.")


def test_surrogates_are_a_pure_function_of_key_patient_type_and_value_and_avoid_real_phi():
    values = [("PERSON", "Harold Finch"), ("HOSPITAL", "Baltimore Rehab"), ("LOCATION", "1939 Jones Drive"),
              ("PHONE_NUMBER", "(811) 555-1234"), ("DATE", "Oct 12"), ("EMAIL_ADDRESS", "jdoe@gmail.com")]
    real = {v for _, v in values}
    first, second = surrogates(real=real), surrogates(real=real)
    issued = [first.surrogate(t, v) for t, v in values]
    assert issued == [second.surrogate(t, v) for t, v in values] == [first.surrogate(t, v) for t, v in values]
    assert issued != [surrogates("p2", real).surrogate(t, v) for t, v in values]
    for surrogate in issued:
        assert not re.search(r"(?i)harold|finch|baltimore|jones|1939|jdoe|gmail|<", surrogate), surrogate


def test_an_address_keeps_its_parts_and_loses_its_zip():
    value = "7253 Cole Road, North Williamburgh, WV 13613"
    surrogates = PatientSurrogates(KEY, "p1", (-365, -30), {value})
    new = surrogates.surrogate("LOCATION", value)
    street, city, state_zip = new.split(", ")
    assert re.fullmatch(r"\d+ [A-Z][a-z]+ Road", street) and city and "Williamburgh" not in city
    assert re.fullmatch(r"WV \d{5}", state_zip) and "13613" not in new
