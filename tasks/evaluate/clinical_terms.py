"""Clinical mentions in text, their negation, and the critical errors of a summary against its note.

Deterministic and fast enough to run on every generated summary (about a millisecond for a 2 KB
note once the vocabulary is built, a few seconds once a process). A mention is a diagnosis or
finding, a drug or a procedure, found by
  1. a vocabulary from maintained sources (`tasks/evaluate/clinical_lexicon.py`): ICD-10-CM titles
     for diagnoses and findings, the `drug-named-entity-recognition` dictionary for drugs; looked
     up as token n-grams, longest first (a dict lookup per n-gram, no regex backtracking);
  2. morphology for single words outside it: "-itis" is a diagnosis, "-ectomy" a procedure, "-olol"
     a drug, unless the word is everyday English (wordfreq) or anatomy that MTSamples showed us.
Tokens are compared after normalisation (lower case, hyphens and spaces alike, singular), so that
"Community-acquired pneumonias" and "community acquired pneumonia" are the same term.

Negation is NegEx with the cue lists of negspacy's "en_clinical" termset (Chapman et al.'s NegEx
triggers): a preceding cue ("no", "denies", "negative for", ...) negates what follows it up to the
end of the clause (a period, semicolon, colon, line break, or a termination term: "but",
"however", "secondary to", ...); a following cue ("was ruled out", "unlikely") negates the clause
before it; pseudo-negations ("no change", "not ruled out") negate nothing.
"""

from __future__ import annotations

import os
import pickle
import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

from negspacy.termsets import termset
from wordfreq import zipf_frequency

from tasks.evaluate.clinical_lexicon import (COMMON_ENGLISH_ZIPF, COMMON_ENGLISH_ZIPF_DRUG, diagnosis_terms, drug_terms,
                                             is_drug_class)
from tasks.user_cache import cache_dir, cache_key, publish

KINDS = ("diagnosis", "drug", "procedure")


@dataclass(frozen=True)
class Mention:
    term: str  # normalised: lower case, single spaces ("atrial fibrillation"); a drug's generic name
    kind: str  # "diagnosis" | "drug" | "procedure"
    start: int
    end: int
    negated: bool


@dataclass(frozen=True)
class NegationCue:
    cue: str  # the cue as written in the text
    start: int  # the cue's span
    end: int
    scope_start: int  # the span it negates
    scope_end: int


@dataclass(frozen=True)
class CriticalError:
    kind: str  # "unsupported_diagnosis" | "unsupported_drug" | "unsupported_procedure" | "negation_flip"
    term: str


# --- morphology for words outside the vocabulary ------------------------------------------------------
# Greek and Latin word endings of medicine (what the suffix means, not a list of our terms).

SUFFIXES = {
    "procedure": (
        "ectomy ectomies otomy ostomy plasty scopy graphy ogram centesis desis rrhaphy pexy tripsy"
    ).split(),
    "drug": (
        "olol pril sartan statin mab nib cillin mycin micin floxacin oxacin cycline zole dipine apine "
        "epine parin xaban gatran vir glutide gliptin gliflozin glitazone triptan setron tidine afil "
        "semide thiazide azepam azolam profen fenac oxetine pramine triptyline caine isone asone olone "
        "terol tropium lukast grel platin rubicin trexate penem zosin sulosin dronate coxib barbital "
        "curonium peridol"
    ).split(),
    "diagnosis": (
        "itis osis iasis ectasis oma emia pathy algia plegia paresis megaly penia rrhea rrhoea rrhage "
        "uria cardia pnea plasia trophy phagia phasia cele lepsy ptysis thyroidism"
    ).split(),
}
MIN_MORPHOLOGY_LENGTH = 6
# A suffixed word this common in English is not a mention ("program" 5.3, "diagnosis" 4.2,
# "cholesterol" 3.7, "anatomy" 3.9); unlisted procedures are rarer ("colonoscopy" 2.7).
MORPHOLOGY_MAX_ZIPF = 3.0
# Rare words with a clinical ending that MTSamples (all 4,000 notes, read by eye) uses for anatomy,
# positions, solutions and sutures, not for a finding or a procedure.
ANATOMY_AND_EQUIPMENT = frozenset("""
    cardia zygoma aponeurosis synchondrosis capitis lordosis lithotomy cardioplegia novafil stroma stoma
    """.split())

# --- negation ----------------------------------------------------------------------------------------

NEGEX = termset("en_clinical").get_patterns()  # negspacy's lists; read, never changed
PSEUDO_NEGATIONS = tuple(NEGEX["pseudo_negations"])
PRE_NEGATIONS = tuple(NEGEX["preceding_negations"])
POST_NEGATIONS = tuple(NEGEX["following_negations"])
SCOPE_ENDS = tuple(NEGEX["termination"])


def _phrase_pattern(phrases) -> str:
    return "|".join(r"\s+".join(map(re.escape, p.split())) for p in sorted(set(phrases), key=lambda p: (-len(p), p)))


# One alternation, longest cue first, so "free of" (preceding) wins over "free" (following).
_CUE = re.compile(rf"(?<![\w'])(?:{_phrase_pattern(PSEUDO_NEGATIONS + PRE_NEGATIONS + POST_NEGATIONS)})(?![\w'])",
                  re.IGNORECASE)
_ROLE = {}
for _role, _phrases in (("pre", PRE_NEGATIONS), ("post", POST_NEGATIONS), ("pseudo", PSEUDO_NEGATIONS)):
    for _phrase in _phrases:
        _ROLE.setdefault(" ".join(_phrase.split()), set()).add(_role)
# A period ends a clause unless it is a decimal point ("0.4 mg").
_CLAUSE_END = re.compile(rf"[.;:!?](?!\d)|\n|\b(?:{_phrase_pattern(SCOPE_ENDS)})\b", re.IGNORECASE)


def negation_cues(text: str) -> list[NegationCue]:
    """Every negation cue in `text` with the span it negates: forward to the clause end, or back to its start."""
    matches = []
    for match in _CUE.finditer(text):
        roles = _ROLE[" ".join(match.group().lower().split())]
        if "pseudo" not in roles:
            matches.append((match, roles))
    if not matches:
        return []
    boundaries = [(m.start(), m.end()) for m in _CLAUSE_END.finditer(text)]
    ends, starts = [b[0] for b in boundaries] + [len(text)], [0] + [b[1] for b in boundaries]
    cues = []
    for match, roles in matches:
        clause_end = ends[bisect_left(ends, match.end())]
        # A cue that can look either way ("declined", "ruled out") looks back at the end of its clause:
        # "surgery declined.", "pneumonia ruled out."
        at_clause_end = not text[match.end() : clause_end].strip()
        backward = "pre" not in roles or (at_clause_end and ("post" in roles or match.group().lower().startswith("rule")))
        if backward:
            clause_start = starts[bisect_right(starts, match.start()) - 1]
            cues.append(NegationCue(match.group(), match.start(), match.end(), clause_start, match.start()))
        else:
            cues.append(NegationCue(match.group(), match.start(), match.end(), match.end(), clause_end))
    return cues


# --- tokens and lexicon ----------------------------------------------------------------------------

_WORD = re.compile(r"[^\W_]+")
_JOINER = re.compile(r"[\s\-'’/]*")  # what may separate the words of one multiword term
_IRREGULAR_SINGULARS = {
    "metastases": "metastasis", "stenoses": "stenosis", "diagnoses": "diagnosis", "prognoses": "prognosis",
    "anastomoses": "anastomosis", "analyses": "analysis", "emboli": "embolus", "thrombi": "thrombus",
    "calculi": "calculus", "bronchi": "bronchus", "leiomyomata": "leiomyoma", "carcinomata": "carcinoma",
    "vertebrae": "vertebra", "diverticula": "diverticulum", "feet": "foot", "teeth": "tooth",
}


@lru_cache(maxsize=1 << 16)
def singular(word: str) -> str:
    """A crude singular, applied alike to the lexicon and the text, so only consistency matters."""
    if word in _IRREGULAR_SINGULARS:
        return _IRREGULAR_SINGULARS[word]
    if len(word) <= 3 or word.endswith(("ss", "us", "is")):
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("sses", "xes", "ches", "shes", "zes")):
        return word[:-2]
    if word.endswith("s"):
        return word[:-1]
    return word


def normalise(phrase: str) -> str:
    """Lower case, hyphens as spaces, single spaces: the form of `Mention.term`."""
    return " ".join(phrase.lower().replace("-", " ").split())


def _key(phrase: str) -> tuple[str, ...]:
    return tuple(singular(w) for w in _WORD.findall(phrase.lower()))


def _tokens(text: str) -> list[tuple[str, int, int]]:
    """(normalised word, start, end) for each word of `text`."""
    return [(singular(m.group().lower()), m.start(), m.end()) for m in _WORD.finditer(text)]


def _joined(text: str, tokens, i: int, n: int) -> bool:
    """Whether tokens i..i+n-1 are one phrase: only spaces, hyphens, apostrophes or slashes between them."""
    return all(_JOINER.fullmatch(text, tokens[j - 1][2], tokens[j][1]) for j in range(i + 1, i + n))


@lru_cache(maxsize=1 << 16)
def _morphology_kind(word: str) -> str | None:
    if len(word) < MIN_MORPHOLOGY_LENGTH or not word.isalpha() or word in ANATOMY_AND_EQUIPMENT:
        return None
    for kind, suffixes in _SUFFIX_TUPLES.items():
        if word.endswith(suffixes):
            return kind if zipf_frequency(word, "en") < MORPHOLOGY_MAX_ZIPF else None
    return None


_SUFFIX_TUPLES = {kind: tuple(suffixes) for kind, suffixes in SUFFIXES.items()}


@dataclass(frozen=True)
class _Lexicon:
    entries: dict  # key tuple -> (canonical term, kind)
    longest: dict  # first word -> the most words of a term starting with it
    surfaces: dict  # canonical term -> key tuples that mean it


def _lexicon_cache_file() -> Path:
    """Where the built lexicon is kept between processes: named by the code and the vocabulary packages that make
    it (building it reads and filters about 100,000 terms; loading the pickle takes a fraction of that)."""
    from importlib.metadata import version

    here = Path(__file__).resolve().parent
    parts = [(here / name).read_bytes() for name in ("clinical_terms.py", "clinical_lexicon.py")]
    parts += [version(package) for package in ("simple-icd-10-cm", "drug-named-entity-recognition", "wordfreq")]
    return cache_dir() / f"clinical-lexicon-{cache_key(*parts)}.pickle"


@cache
def _lexicon() -> _Lexicon:
    path = _lexicon_cache_file()
    try:
        return _Lexicon(*pickle.loads(path.read_bytes()))
    except (OSError, pickle.UnpicklingError, EOFError, TypeError):
        pass
    lexicon = _built_lexicon()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_bytes(pickle.dumps((lexicon.entries, lexicon.longest, lexicon.surfaces), protocol=pickle.HIGHEST_PROTOCOL))
        publish(partial, path)
    except OSError:  # a read-only home: build it in each process
        pass
    return lexicon


def _built_lexicon() -> _Lexicon:
    entries: dict[tuple, tuple[str, str]] = {}

    def add(term: str, canonical: str, kind: str, common: float) -> None:
        key = _key(term)
        # Singular forms can collide with English: the drug "DIDS" would match "did".
        if key and not (len(key) == 1 and zipf_frequency(key[0], "en") >= common):
            entries.setdefault(key, (normalise(canonical), kind))  # a diagnosis of the same words wins

    for term in sorted(diagnosis_terms()):
        add(term, term, "diagnosis", COMMON_ENGLISH_ZIPF)
    for name, generic in sorted(drug_terms().items()):
        add(name, generic, "drug", COMMON_ENGLISH_ZIPF_DRUG)
    longest: dict[str, int] = {}
    surfaces: dict[str, list] = {}
    for key, (canonical, _) in entries.items():
        longest[key[0]] = max(longest.get(key[0], 0), len(key))
        surfaces.setdefault(canonical, []).append(key)
    return _Lexicon(entries, longest, surfaces)


def vocabulary() -> dict[str, str]:
    """Canonical term -> kind, for every term of the vocabulary (morphology finds more)."""
    return {canonical: kind for canonical, kind in _lexicon().entries.values()}


# --- mentions ----------------------------------------------------------------------------------------


def _match_at(text: str, tokens, i: int, lexicon: _Lexicon) -> tuple[int, str, str] | None:
    """(words, term, kind) of the longest term starting at token i, or None."""
    word = tokens[i][0]
    for n in range(min(lexicon.longest.get(word, 0), len(tokens) - i), 0, -1):
        entry = lexicon.entries.get(tuple(t[0] for t in tokens[i : i + n]))
        if entry and (n == 1 or _joined(text, tokens, i, n)):
            return n, entry[0], entry[1]
    kind = _morphology_kind(word)
    return (1, word, kind) if kind else None


def _negated(start: int, end: int, cues: list[NegationCue]) -> bool:
    return any(c.scope_start <= start and end <= c.scope_end for c in cues)


def _mentions(text: str, tokens, cues) -> list[Mention]:
    lexicon, mentions, i = _lexicon(), [], 0
    while i < len(tokens):
        found = _match_at(text, tokens, i, lexicon)
        if found is None:
            i += 1
            continue
        n, term, kind = found
        start, end = tokens[i][1], tokens[i + n - 1][2]
        mentions.append(Mention(term, kind, start, end, _negated(start, end, cues)))
        i += n
    return mentions


def clinical_mentions(text: str) -> list[Mention]:
    """Diagnoses (findings included), drugs and procedures in `text`, in order, longest match first."""
    return _mentions(text, _tokens(text), negation_cues(text))


# --- critical errors ---------------------------------------------------------------------------------


_ADJECTIVES = (("osis", "otic"), ("emia", "emic"), ("itis", "itic"), ("oma", "omatous"), ("y", "ic"))


class _Source:
    """A source note indexed for 'where does this term occur, and is it negated there?'."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.cues = negation_cues(text)
        self.positions: dict[str, list[int]] = {}
        for index, token in enumerate(self.tokens):
            self.positions.setdefault(token[0], []).append(index)
        self.drugs = [m for m in _mentions(text, self.tokens, self.cues) if m.kind == "drug"]

    def find(self, key: tuple[str, ...]) -> list[tuple[int, int]]:
        spans = []
        for i in self.positions.get(key[0], ()):
            window = self.tokens[i : i + len(key)]
            if tuple(t[0] for t in window) == key and _joined(self.text, self.tokens, i, len(key)):
                spans.append((window[0][1], window[-1][2]))
        return spans

    def occurrences(self, mention: Mention) -> list[tuple[int, int]]:
        lexicon = _lexicon()
        keys = lexicon.surfaces.get(mention.term, [_key(mention.term)])
        spans = [span for key in keys for span in self.find(key)]
        if " " not in mention.term:  # the adjective supports the noun: "arthroscopic" -> "arthroscopy"
            for noun, adjective in _ADJECTIVES:
                if mention.term.endswith(noun):
                    spans += self.find((mention.term[: -len(noun)] + adjective,))
        if mention.kind == "drug":
            # The drug's own name is enough: "metoprolol" supports "metoprolol tartrate".
            name = _key(mention.term)[0]
            if len(name) >= 4 and name not in ("vitamin", "prenatal"):
                spans += self.find((name,))
            if is_drug_class(mention.term):
                # The dictionary names classes but not their members: any drug the note names
                # supports "antibiotics" (a class with no drug in the note is still flagged).
                spans += [(d.start, d.end) for d in self.drugs]
        return spans


def critical_errors(source: str, summary: str) -> list[CriticalError]:
    """Summary mentions the source does not support, and mentions whose negation the summary flipped.

    A mention is unsupported when no form of it (synonym, plural, hyphenation; for a drug any of its
    names, brand or generic, or for a drug class any drug) occurs in the source. It is a negation flip
    when it occurs but every occurrence has the opposite negation. Each (kind, term) is reported once.
    """
    index, errors = _Source(source), []
    for mention in clinical_mentions(summary):
        spans = index.occurrences(mention)
        if not spans:
            error = CriticalError(f"unsupported_{mention.kind}", mention.term)
        elif all(_negated(start, end, index.cues) != mention.negated for start, end in spans):
            error = CriticalError("negation_flip", mention.term)
        else:
            continue
        if error not in errors:
            errors.append(error)
    return errors


def unsupported_entities(source: str, output: str) -> list[str]:
    """Terms in `output` with no support in `source` (hallucinated diagnoses, drugs, procedures), once each."""
    terms = []
    for error in critical_errors(source, output):
        if error.kind.startswith("unsupported_") and error.term not in terms:
            terms.append(error.term)
    return terms
