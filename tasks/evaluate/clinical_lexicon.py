"""Clinical vocabulary from maintained, offline sources that install from PyPI.

- Diagnoses and findings: the titles and inclusion terms of ICD-10-CM (CDC/CMS, the April 2026
  release shipped by `simple-icd-10-cm`), chapters A-U: diseases, symptoms (R: "chest pain",
  "night sweats"), injuries. External causes (V-Y) and encounters (Z) are not findings.
- Drugs: the drug dictionary of `drug-named-entity-recognition` (DrugBank open data, MeSH,
  MedlinePlus, NHS): generic and brand names, each mapped to its generic ("coumadin" -> "warfarin"),
  plus MeSH classes ("antibiotics" -> "anti-bacterial agents").
- Procedures: no PyPI package ships procedure names in the words notes use (ICD-10-PCS titles read
  "Resection of appendix, open approach"), so procedures come from morphology alone
  (`clinical_terms.SUFFIXES`: "-ectomy", "-scopy", ...).
`wordfreq` keeps everyday English out: a one-word term that is common English ("pain", "fall",
"he") is no mention on its own.

An ICD title becomes terms by dropping what qualifies it: parentheses and brackets ("Essential
(primary) hypertension" -> "essential hypertension"), "NOS", and everything after a comma or a
linking word ("Pneumonia, unspecified organism" -> "pneumonia"; "Type 2 diabetes mellitus without
complications" -> "type 2 diabetes mellitus"); leading "unspecified"/"other" go, and a shorter term
without a leading severity or side ("acute kidney failure" -> "kidney failure") is added too. One
word is a term only when it is the whole title ("Fever, unspecified"), never half of one cut at a
linking word ("Bone and joint lesions of yaws", "Infection due to Salmonella").
"""

from __future__ import annotations

import bz2
import pickle
import re
from functools import cache
from importlib import resources

from wordfreq import zipf_frequency

# A one-word term at least this frequent in English (zipf: log10 of uses per billion words) is
# everyday English, not a mention: "pain" 5.0, "fall" 5.1, "shock" 4.5 go; "fever" 4.2, "stroke" 4.3 stay.
COMMON_ENGLISH_ZIPF = 4.6
# Drug names are held to a stricter bar: the dictionary's short aliases collide with English
# ("gas-x" -> "gas", "[he]" for helium); "cocaine" 4.0 and "insulin" 3.8 stay.
COMMON_ENGLISH_ZIPF_DRUG = 4.0
MAX_TERM_WORDS = 6

_PARENTHESES = re.compile(r"\([^)]*\)|\[[^\]]*\]")
_LIST_END = re.compile(r"[,;:]|\bnos\b")
_LINK = re.compile(r"\b(?:with|without|due to|in|following|and|or|not elsewhere|as|by|from|involving|associated|"
                   r"complicating|affecting|at|on|of (?:right|left|unspecified|bilateral|other))\b")
_LEADING = frozenset("unspecified other specified".split())
_QUALIFIERS = frozenset("acute chronic subacute mild moderate severe primary secondary recurrent essential "
                        "generalized localized bilateral unilateral right left simple single multiple".split())
_WORD = re.compile(r"[^\W_]+")
_CLASS_WORDS = re.compile(r"\b(?:agents?|inhibitors?|blockers?|antagonists?|agonists?|drugs)\b")


def _common(words: list[str], limit: float) -> bool:
    return len(words) == 1 and zipf_frequency(words[0], "en") >= limit


def icd_terms(text: str, title: bool = True) -> list[str]:
    """The terms an ICD-10-CM title (or, `title=False`, inclusion term) names, most specific first."""
    head = _LIST_END.split(_PARENTHESES.sub(" ", text.lower()))[0]
    cut = _LINK.split(head)[0]
    words = _WORD.findall(cut.replace("'s", ""))
    while words and words[0] in _LEADING:
        words = words[1:]
    # Cut at a linking word, one word is half a phrase: "Bone and joint lesions", "Seeds in trachea".
    # Inclusion terms list sites too ("Lateral", "Wound NOS"): their single words are no terms.
    single_ok = cut == head and title
    if not words or len(words) > MAX_TERM_WORDS or words[-1] in ("of", "to", "the", "a") or (len(words) == 1 and not single_ok):
        return []
    terms = [" ".join(words)]
    while len(words) > 2 and words[0] in _QUALIFIERS:  # "acute abdomen" keeps its "acute"
        words = words[1:]
        terms.append(" ".join(words))
    return [t for t in terms if not _common(t.split(), COMMON_ENGLISH_ZIPF)]


@cache
def diagnosis_terms() -> frozenset[str]:
    """Lower-case diagnosis and finding terms from ICD-10-CM, chapters A-U."""
    import simple_icd_10_cm as icd

    terms = set()
    for code in icd.get_all_codes(with_dots=True):
        if "-" in code or not code[0].isalpha() or code[0] in "VWXYZ":  # chapters, blocks, external causes
            continue
        terms.update(icd_terms(icd.get_description(code)))
        for text in icd.get_inclusion_term(code):
            terms.update(icd_terms(text, title=False))
    return frozenset(terms)


def _drug_dictionary() -> dict:
    package = resources.files("drug_named_entity_recognition")
    with bz2.open(package.joinpath("drug_ner_dictionary.pkl.bz2").open("rb")) as handle:
        return pickle.load(handle)  # the package's own data file, as its find_drugs() loads it


def _clean_drug_name(name: str) -> str:
    return " ".join(_WORD.findall(_PARENTHESES.sub(" ", name.lower())))


@cache
def drug_terms() -> dict[str, str]:
    """Lower-case drug name (generic, brand or class) -> its generic or class name."""
    variants = _drug_dictionary()["drug_variant_to_canonical"]
    names = {}
    for variant, canonicals in variants.items():
        words = _WORD.findall(variant.lower())
        if (not words or len(words) > 4 or any(not w.isalpha() for w in words) or len(words[0]) < 3
                or _common(words, COMMON_ENGLISH_ZIPF_DRUG)
                or all(zipf_frequency(w, "en") >= COMMON_ENGLISH_ZIPF_DRUG for w in words)):
            continue
        names.setdefault(" ".join(words), _clean_drug_name(canonicals[0]) or " ".join(words))
    return names


def is_drug_class(name: str) -> bool:
    """A MeSH class ("anti-bacterial agents", "proton pump inhibitors") rather than one drug."""
    return bool(_CLASS_WORDS.search(name))
