"""Clinical PHI recognizers that Presidio's defaults lack.

spaCy's small English NER misses most names in upper-case or lower-case notes, so names are also
found by their context: header labels (PATIENT:, ATTENDING:), titles (Dr., Mrs.), credentials
(", MD"), relations ("wife Mary") and "signed by". Candidate name tokens stop at the first word of
a stop list, which keeps "Dr. Cook in two weeks" from swallowing "in".
"""

from __future__ import annotations

import re
import string
from functools import cache

from presidio_analyzer import EntityRecognizer, RecognizerResult
from wordfreq import zipf_frequency

from tasks.deidentify.lexicons import CLINICAL_SHORTHAND, person_names

# Words that end a run of candidate name tokens (function words, common clinical words).
STOP_WORDS = frozenset(
    """a about after again all also am an and any are as at be been before being both but by can
    could did do does during each for from had has have he her here hers him his how i if in into is
    it its me more most my no nor not now of off on once only or other our out over own per same she
    should so some such than that the their them then there these they this those through to too
    under until up very was we were what when where which while who whom why will with would you your
    patient patients pt history present illness presents presented reports reported denies states
    seen see evaluated admitted discharged follow followed up call called note notes today yesterday
    tomorrow daily weekly week weeks day days month months year years old male female man woman
    who lives living home alone bedside at-bedside reached number phone fax email address insurance
    member id mrn dob date service account license serial signed electronically dictated transcribed
    md do rn np pa dr mr mrs ms miss exam examination assessment plan medications medication allergies
    pain blood pressure heart rate normal abnormal left right bilateral mild moderate severe acute
    chronic hospital clinic center medical general memorial unit icu er ed floor room bed
    """.split()
)

NAME_TOKEN = r"(?:[A-Za-z]\.(?![A-Za-z])|[A-Za-z][A-Za-z'\-]*)"  # a word, or an initial like 'J.'
# Words at least this frequent in English (wordfreq's Zipf scale; "aware" 4.8, "notify" 3.9) are
# names only when a name list has them.
COMMON_WORD_ZIPF = 3.5
UNCOMMON_NAME_ZIPF = 3.8  # after "MD", "NP", "Rabbi": "Spears" 3.7, "Patty" 3.6; "cough" 4.0, "sees" 4.6
INITIAL_SURNAME_ZIPF = 4.6  # after an initial: "Z. Miller" 4.5; "R. BASE" 5.0, "S. coffee" 4.9
NAME_TOKENS = rf"{NAME_TOKEN}(?:[ ]{NAME_TOKEN}){{0,3}}"
RELATIONS = (
    "wife|husband|spouse|partner|daughter|son|mother|father|mom|dad|sister|brother|niece|nephew|aunt|"
    "uncle|grandson|granddaughter|grandmother|grandfather|fiance|fiancee|boyfriend|girlfriend|friend|"
    "guardian|proxy|caregiver|neighbor"
)
CREDENTIALS = r"MD|M\.D\.|DO|D\.O\.|RN|NP|PA|PA-C|CNM|CRNA|PhD|FACS|FACC|BSN|MSN|DNP|RRT|MSW|LICSW|LCSW|LPN|CNA|PharmD|RPh"
# In ICU notes these are also nasal prongs, the pulmonary artery, the verb and "Notify MD".
AMBIGUOUS_CREDENTIALS = frozenset({"md", "do", "np", "pa"})
HEADER_LABELS = (
    r"patient(?:[ ]name)?|name|pt|attending(?:[ ]physician)?|physician|pcp|primary care(?:[ ]physician)?|"
    r"surgeon|assistant|anesthesiologist|referring(?:[ ]physician)?|consultant|provider|cc|dictated by|"
    r"signed by|electronically signed by|reviewed by|nurse|resident|fellow|emergency contact|contact"
)


def is_content_word(token: str) -> bool:
    bare = token.strip(".'-").lower()
    return bool(bare) and bare not in STOP_WORDS and bare[0].isalpha()


def could_be_name(token: str) -> bool:
    """A word that can be a name: an initial ("J."), a listed first name or surname, or a word too
    rare in English to be anything else ("Vasquez", a misspelt "vaseqez"). Common words ("aware",
    "visited", "notify") and single letters ("4L NP", "MOM X1") are not."""
    if not is_content_word(token):
        return False
    bare = token.strip(".'-").lower()
    if bare in CLINICAL_SHORTHAND:
        return False
    if len(bare) == 1:
        return token.endswith(".")
    first_names, last_names = person_names()
    if bare in first_names or bare in last_names:
        return True
    return zipf_frequency(bare, "en") < COMMON_WORD_ZIPF and not is_misspelt_common_word(bare)


# A misspelling's nearest word is at least this frequent: "notifed" -> "notified" 3.8, "Cardic" -> "cardiac" 3.8,
# "grandaughter" -> "granddaughter" 3.6, "assymptomatic" -> "asymptomatic" 2.9.
MISSPELT_WORD_ZIPF = 2.5


@cache
def is_misspelt_common_word(word: str) -> bool:
    """An unlisted word a letter dropped, added or swapped away from an English word that is no name:
    "tranplant", "notifed". Changed letters do not count: rare names are often a letter away from a word
    ("Lavely", "Mackerer")."""
    word = word.lower()
    first_names, last_names = person_names()
    if len(word) < 5 or word in first_names or word in last_names:
        return False
    splits = [(word[:i], word[i:]) for i in range(len(word) + 1)]
    edits = {a + b[1:] for a, b in splits if b}
    edits |= {a + b[1] + b[0] + b[2:] for a, b in splits if len(b) > 1}
    edits |= {a + c + b for a, b in splits for c in string.ascii_lowercase}
    edits.discard(word)
    return any(zipf_frequency(e, "en") >= MISSPELT_WORD_ZIPF and e not in first_names and e not in last_names
               for e in edits)


def could_be_first_name(token: str) -> bool:
    """After a relation ("wife Mary", "son Vlad") comes a first name; surnames that are common words
    ("Still", "Last", "Brought") are read as words there: "WIFE STILL IN DENIAL"."""
    if not could_be_name(token):
        return False
    bare = token.strip(".'-").lower()
    return len(bare) == 1 or bare in person_names()[0] or zipf_frequency(bare, "en") < COMMON_WORD_ZIPF


def could_be_uncommon_name(token: str) -> bool:
    """A listed name that is rare as an English word ("Spears", "Patty"), or an unlisted rare word."""
    return could_be_name(token) and zipf_frequency(token.strip(".'-").lower(), "en") < UNCOMMON_NAME_ZIPF


def leading_name_tokens(candidate: str, max_tokens: int = 3, accept=could_be_name) -> str:
    """The name-like prefix of `candidate`: tokens up to the first word that `accept` refuses. An "O" or "D"
    before a name is the first part of it with its apostrophe lost: "Dr. o rourke"."""
    kept = []
    tokens = candidate.split(" ")[:max_tokens]
    for index, token in enumerate(tokens):
        split_prefix = token.lower() in ("o", "d") and index + 1 < len(tokens) and accept(tokens[index + 1])
        if not (accept(token) or split_prefix) or _case_breaks(kept, token):
            break
        kept.append(token)
    return " ".join(kept).rstrip(".") if kept else ""


def _case_breaks(kept: list[str], token: str) -> bool:
    """'Mr. Finch improved': after a capitalised name, a lower-case word is not part of it."""
    return bool(kept) and kept[0][0].isupper() and token[0].islower()


def trailing_name_tokens(candidate: str, max_tokens: int = 3) -> str:
    kept = []
    for token in reversed(candidate.split(" ")[-max_tokens:]):
        if not could_be_name(token) or _case_breaks(kept, token):
            break
        kept.append(token)
    return " ".join(reversed(kept))


class ContextNameRecognizer(EntityRecognizer):
    """PERSON spans found by the words around them rather than by their capitalisation."""

    AFTER_CONTEXT = [  # (pattern, score, which words can be names)
        (re.compile(rf"(?im)^[ \t]*(?:{HEADER_LABELS})[ \t]*:[ \t]*(?:dr\.?[ ]+)?(?P<name>{NAME_TOKENS})"), 0.85, could_be_name),
        # "MS" without a period is morphine or mental status in ICU notes: "MS back to baseline".
        (re.compile(rf"(?i)\b(?:dr|mr|mrs|ms(?=\.)|miss|mx|prof|doctor)\.?[ ]+(?P<name>{NAME_TOKENS})"), 0.85, could_be_name),
        (re.compile(rf"(?i)\b(?:rabbi|rev|reverend|pastor|chaplain|fr)\.?[ ]+(?P<name>{NAME_TOKENS})"), 0.85,
         could_be_uncommon_name),
        # "W/MD SPEARS", "per NP Patty", "MS SANTANGELO"; "MD aware", "NP COUGH", "MS back" have no name after them.
        (re.compile(rf"(?i)\b(?:md|np|rn|ms|ho)[ ]+(?P<name>{NAME_TOKENS})"), 0.7, could_be_uncommon_name),
        (re.compile(rf"(?i)\b(?:{RELATIONS})(?:[ ]*,[ ]*|[ ]is[ ]+|[ ]named[ ]+|[ ]+)(?P<name>{NAME_TOKENS})"), 0.7,
         could_be_first_name),
        (re.compile(rf"(?i)\b(?:signed|dictated|transcribed|reviewed|seen|examined)[ ]by[ ]+(?:dr\.?[ ]+)?(?P<name>{NAME_TOKENS})"),
         0.8, could_be_name),
    ]
    BEFORE_CREDENTIAL = re.compile(rf"(?<![\w.])(?P<name>(?:{NAME_TOKEN}[ ]){{0,2}}{NAME_TOKEN})(?P<comma>,?)[ ]+(?P<credential>{CREDENTIALS})\b(?![#']|/\d|[ ]?\d)", re.I)
    # "Z. MILLER", "per E. Welsh": an initial before a listed surname.
    INITIAL_AND_SURNAME = re.compile(r"(?<![\w.'&/])[A-Z]\.[ ]?(?P<surname>[A-Za-z][A-Za-z'\-]+)")

    def __init__(self) -> None:
        super().__init__(supported_entities=["PERSON"], name="ContextNameRecognizer")

    def load(self) -> None:
        pass

    def analyze(self, text, entities, nlp_artifacts=None):
        results = []
        for pattern, score, accept in self.AFTER_CONTEXT:
            for match in pattern.finditer(text):
                name = leading_name_tokens(match.group("name"), accept=accept)
                if name:
                    start = match.start("name")
                    results.append(RecognizerResult("PERSON", start, start + len(name), score))
        for match in self.INITIAL_AND_SURNAME.finditer(text):
            surname = match.group("surname")
            if (surname.lower() in person_names()[1] and could_be_name(surname)
                    and zipf_frequency(surname.lower(), "en") < INITIAL_SURNAME_ZIPF):
                results.append(RecognizerResult("PERSON", match.start(), match.end(), 0.7))
        for match in self.BEFORE_CREDENTIAL.finditer(text):
            name = trailing_name_tokens(match.group("name"))
            if name:
                end = match.end("name")
                sure = match.group("comma") or match.group("credential").lower() not in AMBIGUOUS_CREDENTIALS
                results.append(RecognizerResult("PERSON", end - len(name), end, 0.75 if sure else 0.45))
        return results


class GroupPatternRecognizer(EntityRecognizer):
    """Like Presidio's PatternRecognizer, but the span is a named group (`phi`) of the match."""

    def __init__(self, entity: str, patterns: list[tuple], name: str) -> None:
        # Each pattern is (regex, score) or (regex, score, trim): trim(text, start, end) narrows the span.
        self.patterns = [(re.compile(p[0], re.I | re.M), p[1], p[2] if len(p) > 2 else None) for p in patterns]
        self.entity = entity
        super().__init__(supported_entities=[entity], name=name)

    def load(self) -> None:
        pass

    def analyze(self, text, entities, nlp_artifacts=None):
        results = []
        for pattern, score, trim in self.patterns:
            for match in pattern.finditer(text):
                start, end = match.span("phi")
                if trim is not None:
                    start, end = trim(text, start, end)
                if end > start:
                    results.append(RecognizerResult(self.entity, start, end, score))
        return results


NOT_A_QUANTITY = r"\b(?![.:/\-]?\d)(?![ ]?(?:cc|ml|mg|mcg|units?|u|kcal|hrs?|h|cm|mm|kg|g|gm|ft)\b)"
TIME_WORDS = re.compile(r"(?:\b(?:at|by|until|till|til|around|approx|about|before|after|from|to|between|and|"
                        r"start(?:ed)?|given|due|q)|[@~>-])[ ]*$", re.I)


# Words a year follows in a history ("CVA 2004", "since 2006", "dx'd in 2010").
YEAR_CONTEXT = (r"in|since|during|of|year|yr|mi|cva|cabg|ptca|pci|stent|stroke|dx|dx'd|diagnosed|s/p|hx|history|"
                r"born|surgery|repair|resection|removal|replacement|transplant|ca|cancer|smoking|quit")


def not_after_time_word(text: str, start: int, end: int) -> tuple[int, int]:
    """Nothing when the number follows a word that times follow ("at 2000", "~1930", "until 2030")."""
    return (start, start) if TIME_WORDS.search(text[max(0, start - 12) : start]) else (start, end)


MONTHS = r"jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|jun(?:e)?|jul(?:y)?|aug(?:ust)?|sep(?:t|tember)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?"
STREET_SUFFIX = (
    r"street|st|avenue|ave|road|rd|lane|ln|drive|dr|court|ct|boulevard|blvd|way|place|pl|terrace|ter|"
    r"circle|cir|parkway|pkwy|highway|hwy|square|sq|trail|trl|route|rte|crossing|loop|alley|row"
)
FACILITY = r"hospital|medical center|health center|medical centre|clinic|infirmary|health system|healthcare|nursing home|rehabilitation center|hospice"
# Nursing shorthand for a named facility ("UNION HOSP", "kernan hosp", "BALTIMORE REHAB", "mazur campus"):
# sure when the words before it are not generic ("outside hosp", "acute rehab").
FACILITY_SHORTHAND = r"hosp|rehab|campus|memorial|nursing facility|nsg home|snf|ltac"


# Stop words that belong to facility names ("St. Mary's", "Dixon Memorial Hospital").
FACILITY_NAME_WORDS = frozenset({"st", "memorial", "general", "medical", "center", "clinic", "hospital", "community"})


# Words that make a facility some facility rather than a named one ("leaving prior medical center").
UNNAMED_FACILITY_WORDS = frozenset({"previous", "prior", "outside", "another", "other", "local", "nearest",
                                    "closest", "same", "referring", "leaving", "transferring"})
FACILITY_WORDS = frozenset(re.split(r"[| ]", FACILITY)) | {"st"}


def trim_facility_span(text: str, start: int, end: int) -> tuple[int, int]:
    """Keep the words after the last stop word of a facility match ("admitted to the Mercy Hospital",
    "TRANSFER TO BALTIMORE REHAB"); nothing when no name word is left ("to rehab", "prior medical center")."""
    words = text[start:end].split(" ")
    ends_name = (STOP_WORDS - FACILITY_NAME_WORDS) | UNNAMED_FACILITY_WORDS
    last_stop = max((i for i, w in enumerate(words[:-1]) if w.strip(".").lower() in ends_name), default=-1)
    if all(w.strip(".").lower() in FACILITY_WORDS for w in words[last_stop + 1 :]):
        return start, start
    return start + sum(len(w) + 1 for w in words[: last_stop + 1]), end


# Words that make "<word> rehab" a kind of care rather than a named place.
GENERIC_FACILITY_WORDS = frozenset("""acute outside cardiac pulmonary physical inpatient outpatient local another other
    community home rehab hosp hospital subacute sub-acute long term skilled nursing vna private state va city county
    general university nearest closest same new previous prior con't cont continue to per from""".split())


def trim_named_facility(text: str, start: int, end: int) -> tuple[int, int]:
    """The name before a facility shorthand ("UNION" of "UNION HOSP"); empty when its words are generic.
    "Rehab" and "Memorial" stay: "Baltimore Rehab" and "Harford Memorial" are the places' names, where
    "UNION HOSP" abbreviates a kind of place."""
    start, end = trim_facility_span(text, start, end)
    words = text[start:end].split(" ")
    if len(words) < 2 or any(w.lower() in GENERIC_FACILITY_WORDS for w in words[:-1]):
        return start, start
    return start, end if words[-1].lower() in ("rehab", "memorial") else start + len(" ".join(words[:-1]))


def not_a_lab_value(text: str, start: int, end: int) -> tuple[int, int]:
    """Nothing when the "identifier" starts with clinical shorthand: "ID: TMAX-99" is the infectious-disease line."""
    letters = re.match(r"[A-Za-z]*", text[start:end]).group().lower()
    return (start, start) if letters in CLINICAL_SHORTHAND else (start, end)


def saint_name(text: str, start: int, end: int) -> tuple[int, int]:
    saint = re.split(r"[ .']+", text[start:end])[1].lower()
    return (start, end) if saint in person_names()[0] else (start, start)


# Street suffixes that are also clinical shorthand ("16 u lente SQ", "HCT 25 stable CT", "3 WAY FOLEY").
AMBIGUOUS_STREET_SUFFIXES = frozenset({"st", "dr", "ct", "sq", "pl", "way", "row", "loop", "ter", "cir"})


def street_name_words(text: str, start: int, end: int) -> tuple[int, int]:
    """An address only when the words between number and suffix are content words of two letters or more, and
    capitalised before an ambiguous suffix: not "3 WAY FOLEY IN PLACE", "16 u lente SQ", "25 stable CT"."""
    words = text[start:end].split()
    suffix, words = words[-1].strip(".").lower(), words[1:-1]
    if any(len(w) < 2 or not is_content_word(w) or w.lower() in CLINICAL_SHORTHAND for w in words):
        return start, start
    if suffix in AMBIGUOUS_STREET_SUFFIXES and not all(w[0].isupper() for w in words):
        return start, start
    return start, end


def trim_to_place_tokens(text: str, start: int, end: int) -> tuple[int, int]:
    """Place names are often common words ("North Bonnie", "Port Brenda"): stop only at stop words."""
    return start, start + len(leading_name_tokens(text[start:end], accept=is_content_word))


def clinical_recognizers() -> list[EntityRecognizer]:
    return [
        ContextNameRecognizer(),
        GroupPatternRecognizer("DATE", [
            (r"(?<![\w./])(?P<phi>(?:0?[1-9]|1[0-2])(?P<sep>[/\-.])(?:0?[1-9]|[12]\d|3[01])(?P=sep)(?:\d{4}|\d{2}))(?![\w/%]|\.\d)", 0.85),
            (r"(?P<phi>\b(?:19|20)\d{2}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])\b)", 0.9),
            (rf"(?P<phi>\b(?:{MONTHS})\.?[ ]+\d{{1,2}}(?:st|nd|rd|th)?,?[ ]+(?:1[89]|20)\d{{2}}\b)", 0.9),
            (rf"(?P<phi>\b\d{{1,2}}(?:st|nd|rd|th)?[ ]+(?:{MONTHS})\.?,?[ ]+(?:1[89]|20)\d{{2}}\b)", 0.9),
            (rf"(?P<phi>\b(?:{MONTHS})\.?[ ]+(?:19|20)\d{{2}}\b)", 0.6),
            (rf"(?P<phi>\b\d{{1,2}}[ ]+(?:{MONTHS})\.?,?[ ]+'?\d{{2}})\b", 0.85),  # 28 Oct, 88
            (rf"\b(?:in|since|during|early|late|mid|last|next|until|of)[ ]+(?P<phi>(?!may\b|mar\b|dec\b)(?:{MONTHS})\b\.?)", 0.7),  # in sept.; not "in dec", "may"
            # "on the 11th."; not "the 5th intercostal space", "the 4th ventricle", "on 1st step mattress"
            (r"\b(?:the|on)[ ]+(?P<phi>(?:[12]?\d|3[01])(?:st|nd|rd|th))\b(?=[ ]*(?:[.,;)]|$|of\b))", 0.7),
            (r"(?<![\w'])(?P<phi>'\d{2})\b(?!['\w])", 0.8),  # '92
            # A bare year ("MI 1992", "since 2006"). Nursing notes also write clock times as 1900 or 2030, so
            # a year that could be a time ("at 2000") needs a context that is not a time's.
            (rf"(?<![\w.:/\-])(?P<phi>19[6-9]\d){NOT_A_QUANTITY}", 0.85),
            (rf"(?<![\w.:/\-])(?P<phi>(?:19[0-5]|20[0-4])\d){NOT_A_QUANTITY}", 0.5, not_after_time_word),
            (rf"\b(?:{YEAR_CONTEXT})[ ]+(?:in[ ]+)?(?P<phi>(?:19[0-5]|20[0-4])\d){NOT_A_QUANTITY}", 0.75),
            (rf"\b(?:{YEAR_CONTEXT})[ ]+(?:in[ ]+)?(?P<phi>\d{{2}})'(?![\w'])", 0.75),  # "RESECTION 62'"
        ], name="ClinicalDateRecognizer"),
        GroupPatternRecognizer("AGE", [
            (r"(?P<phi>\b(?:9\d|1[0-2]\d))(?=[ -]*(?:years?|yrs?|yo\b|y/o|y\.o\.))", 0.9),
            (r"\b(?:age|aged)[ :]+(?P<phi>(?:9\d|1[0-2]\d))\b", 0.85),
        ], name="OldAgeRecognizer"),
        GroupPatternRecognizer("PHONE_NUMBER", [
            (r"(?P<phi>(?<!\d)(?:\+?1[ .\-]?)?\(?\d{3}\)?[ .\-]?\d{3}[ .\-]\d{4}(?:[ ]*(?:x|ext\.?|extension)[ ]*\d{1,5})?)(?!\d)", 0.7),
        ], name="ClinicalPhoneRecognizer"),
        GroupPatternRecognizer("US_SSN", [
            (r"(?P<phi>\b\d{3}-\d{2}-\d{4}\b)", 0.6),
            (r"\b(?:ssn|social security(?: number| no\.?)?)[ :#]*(?P<phi>\d{3}[ \-]?\d{2}[ \-]?\d{4})\b", 0.95),
        ], name="ClinicalSsnRecognizer"),
        GroupPatternRecognizer("ID", [
            (r"\b(?:mrn|medical record(?: number| no\.?| #)?|acct|account(?: number| no\.?)?|member id|"
             r"policy(?: number| no\.?)?|subscriber id|license|licence|lic|npi|dea|serial|device id|unit no\.?|"
             r"record(?: number| no\.?)|id)[ \t]*(?:#|no\.?|number)?[ \t]*[:#]?[ \t]*(?P<phi>(?=[A-Z\-]*\d)[A-Z0-9][A-Z0-9\-]{3,})\b", 0.85, not_a_lab_value),
            (r"(?P<phi>\b[A-Z]{1,3}-?[A-Z]?\d{5,}\b)", 0.6),
            (r"(?P<phi>\b\d{6,}\b)", 0.5),
        ], name="ClinicalIdRecognizer"),
        GroupPatternRecognizer("LOCATION", [
            (rf"(?<![\d.])(?P<phi>\b\d{{1,6}}[ ]+(?:[A-Za-z][A-Za-z']*[ ]+){{1,4}}(?:{STREET_SUFFIX})\b\.?"
             r"(?:,?[ ]+(?:apt|apartment|suite|ste|unit|#)\.?[ ]*[A-Za-z0-9\-]+)?)", 0.8, street_name_words),
            (r",[ ]+(?P<phi>[A-Za-z][A-Za-z.' ]{1,30}?),[ ]+[A-Za-z]{2}[ ]+\d{5}(?:-\d{4})?\b", 0.8),
            (r"\b[A-Za-z]{2}[ ]+(?P<phi>\d{5}(?:-\d{4})?)\b", 0.7),
            (r"\bzip(?:[ ]code)?[ :#]*(?P<phi>\d{5}(?:-\d{4})?)\b", 0.9),
            (r"\b(?:lives|living|resides|residing|moved)[ ]+(?:in|to)[ ]+(?P<phi>[A-Za-z][A-Za-z'\-]*(?:[ ][A-Za-z][A-Za-z'\-]*){0,2})", 0.6, trim_to_place_tokens),
        ], name="ClinicalLocationRecognizer"),
        GroupPatternRecognizer("LOCATION", [
            # Places named for saints: "St. Agnes", "St Mary's"; not "ST ELEVATION" (no first name).
            (r"(?<![\w.])(?P<phi>st\.?[ ]+[a-z]+(?:'s)?)\b", 0.7, saint_name),
            # Hospitals named for a devotion, often written without "hospital": "to sacred heart", "at Holy Cross".
            (r"\b(?P<phi>(?:sacred[ ]heart|holy[ ](?:cross|family|name|redeemer|spirit)|good[ ](?:samaritan|shepherd)|"
             r"our[ ]lady[ ]of[ ][a-z]+)(?:[ ]memorial)?)\b", 0.7),
        ], name="SaintPlaceRecognizer"),
        GroupPatternRecognizer("HOSPITAL", [
            (rf"(?P<phi>(?:\bst\.?[ ]+)?(?:\b[A-Za-z][A-Za-z'\-]*[ ]+){{1,3}}(?:{FACILITY})\b)", 0.7, trim_facility_span),
        ], name="HospitalRecognizer"),
        GroupPatternRecognizer("LOCATION", [
            (rf"(?P<phi>(?:\b[A-Za-z][A-Za-z'\-]*[ ]+){{1,3}}(?:{FACILITY_SHORTHAND})\b)", 0.7, trim_named_facility),
        ], name="FacilityNameRecognizer"),
        GroupPatternRecognizer("URL", [
            (r"(?P<phi>\b(?:https?://|www\.)[^\s<>\"']+[^\s<>\"'.,;:)])", 0.9),
        ], name="ClinicalUrlRecognizer"),
    ]


