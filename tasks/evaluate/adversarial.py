"""Adversarial perturbations of model inputs: does an expert's output follow what the note says?

Each perturbation is a plain function of (text, random.Random), deterministic given the seed, so an
evaluation can regenerate exactly the inputs it scored:
  negation_flip  one finding changes polarity ("denies chest pain" -> "reports chest pain");
  distractor     an irrelevant clinical-sounding sentence naming a diagnosis or drug the note lacks;
  upper_case     the whole note in capitals, as some dictation systems store it;
  typos          about 5% of the words of four letters or more get one typo; numbers never change.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator

from tasks.evaluate.clinical_terms import Mention, NegationCue, clinical_mentions, negation_cues, unsupported_entities

# The affirmative for each negation cue of clinical_terms; "" deletes the cue.
AFFIRMATIVES = {
    "no": "", "not": "", "never": "", "neither": "", "nor": "and",
    "denies": "reports", "denied": "reported", "deny": "report", "denying": "reporting",
    "without": "with", "negative for": "positive for", "free of": "with", "absence of": "presence of",
    "no evidence of": "evidence of", "no history of": "a history of", "no signs of": "signs of",
    "no sign of": "signs of", "no symptoms of": "symptoms of", "no complaints of": "complaints of",
    "ruled out": "confirmed", "rules out": "confirms",
    "was ruled out": "was confirmed", "were ruled out": "were confirmed", "is ruled out": "is confirmed",
    "are ruled out": "are confirmed", "has been ruled out": "has been confirmed",
    "have been ruled out": "have been confirmed",
}

# Distractors name something a note about another patient could plausibly hold; never this patient.
DISTRACTOR_TEMPLATES = (
    ("diagnosis", "The patient's {relative} was recently diagnosed with {term}."),
    ("diagnosis", "The patient's {relative} has a long history of {term}."),
    ("diagnosis", "Administrative note: the waiting room leaflet on {term} was updated this month."),
    ("drug", "The patient's {relative} takes {term} for an unrelated condition."),
    ("drug", "Pharmacy note: a refill of {term} was requested for another household member."),
    ("drug", "Billing note: prior authorization for {term} is pending on a different account."),
)
DISTRACTOR_TERMS = {
    "diagnosis": ("glaucoma", "gout", "psoriasis", "rheumatoid arthritis", "hypothyroidism", "celiac disease",
                  "macular degeneration", "osteoporosis", "sleep apnea", "eczema", "cataract", "migraine"),
    "drug": ("allopurinol", "levothyroxine", "alendronate", "sertraline", "montelukast", "omeprazole",
             "cetirizine", "sumatriptan", "tamsulosin", "donepezil", "hydroxychloroquine", "finasteride"),
}
RELATIVES = ("mother", "father", "sister", "brother", "grandmother", "uncle", "neighbour")
TYPO_RATE = 0.05
_TITLES = {"dr", "mr", "mrs", "ms", "st", "no", "vs", "e.g", "i.e"}


def _cased_like(replacement: str, original: str) -> str:
    if original.isupper() and len(original) > 1:
        return replacement.upper()
    if original[:1].isupper():
        return replacement[:1].upper() + replacement[1:]
    return replacement


def _remove_cue(text: str, cue: NegationCue) -> str:
    affirmative = AFFIRMATIVES.get(" ".join(cue.cue.lower().split()), "")
    if affirmative:
        return text[: cue.start] + _cased_like(affirmative, cue.cue) + text[cue.end :]
    rest = text[cue.end :].lstrip()
    if cue.cue[:1].isupper() and not text.isupper():  # "No fever." -> "Fever."
        rest = rest[:1].upper() + rest[1:]
    return text[: cue.start] + rest


def _insert_cue(text: str, mention: Mention, rng: random.Random) -> str:
    cue = rng.choice(("no ", "no evidence of ")) if mention.kind == "diagnosis" else "no "
    surface = text[mention.start : mention.end]
    before = text[: mention.start].rstrip()
    sentence_start = not before or before[-1] in ".;:!?\n"
    if text.isupper():
        cue = cue.upper()
    elif sentence_start:
        cue = cue.capitalize()
        if not surface.isupper():  # keep abbreviations ("COPD") as written
            surface = surface[:1].lower() + surface[1:]
    return text[: mention.start] + cue + surface + text[mention.end :]


def _negation_candidates(text: str, mentions: list[Mention], rng: random.Random) -> Iterator[str]:
    """Removals of a cue first (the brief's 'flip where there is a negation'), then insertions."""
    cues = negation_cues(text)
    negated = [m for m in mentions if m.negated]
    rng.shuffle(negated)
    for mention in negated:
        for cue in cues:
            if cue.scope_start <= mention.start and mention.end <= cue.scope_end:
                yield _remove_cue(text, cue)
                break
    affirmed = [m for m in mentions if not m.negated]
    rng.shuffle(affirmed)
    affirmed.sort(key=lambda m: m.kind != "diagnosis")  # findings read most naturally negated
    for mention in affirmed:
        yield _insert_cue(text, mention, rng)


def _flipped(before: list[Mention], after: list[Mention]) -> int | None:
    """How many mentions changed negation, or None when the mentions themselves changed."""
    if [(m.term, m.kind) for m in before] != [(m.term, m.kind) for m in after]:
        return None
    return sum(b.negated != a.negated for b, a in zip(before, after))


def negation_flip(text: str, rng: random.Random) -> str:
    """Flip the negation of exactly one mention where any edit can; the text unchanged without mentions."""
    mentions = clinical_mentions(text)
    fallback = None
    for candidate in _negation_candidates(text, mentions, rng):
        changed = _flipped(mentions, clinical_mentions(candidate))
        if changed == 1:
            return candidate
        if changed and fallback is None:
            fallback = candidate
    return fallback or text


def _sentence_starts(text: str) -> list[int]:
    starts = [0]
    for match in re.finditer(r"[.!?]\s+|\n\s*", text):
        word = re.search(r"[\w.]*$", text[: match.start()]).group().lower()
        if match.group()[0] in ".!?" and (word in _TITLES or word.isdigit()):
            continue  # "Dr. Smith", "1. Aspirin"
        starts.append(match.end())
    return sorted(set(starts) | {len(text)})


def _distractor_sentence(text: str, rng: random.Random) -> str:
    candidates = [(template, term) for kind, template in DISTRACTOR_TEMPLATES for term in DISTRACTOR_TERMS[kind]]
    rng.shuffle(candidates)
    for template, term in candidates:
        sentence = template.format(relative=rng.choice(RELATIVES), term=term)
        if term in unsupported_entities(text, sentence):
            return sentence
    return sentence  # the note names every distractor term: still irrelevant, no longer novel


def distractor(text: str, rng: random.Random) -> str:
    """Insert one sentence about someone or something else that names a diagnosis or drug absent from `text`."""
    sentence = _distractor_sentence(text, rng)
    if text.isupper():
        sentence = sentence.upper()
    position = rng.choice(_sentence_starts(text))
    if position == len(text):
        return text + ("" if not text or text[-1].isspace() else " ") + sentence
    return text[:position] + sentence + " " + text[position:]


def upper_case(text: str, rng: random.Random) -> str:
    return text.upper()


def _typo(word: str, rng: random.Random) -> str:
    """One typo inside the word (its first and last letters stay): swap, drop or double a letter."""
    inner = range(1, len(word) - 1)
    swappable = [i for i in inner if i + 1 < len(word) - 1 and word[i] != word[i + 1]]
    operation = rng.choice(("swap", "drop", "double"))
    if operation == "swap" and swappable:
        i = rng.choice(swappable)
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    i = rng.choice(inner)
    if operation == "drop":
        return word[:i] + word[i + 1 :]
    return word[:i] + word[i] + word[i:]


def typos(text: str, rng: random.Random) -> str:
    """About 5% of the purely alphabetic words of 4+ letters get one typo; digits are never touched."""
    words = [m for m in re.finditer(r"[^\W_]+", text) if len(m.group()) >= 4 and m.group().isalpha()]
    if not words:
        return text
    chosen = sorted(rng.sample(range(len(words)), max(1, round(TYPO_RATE * len(words)))), reverse=True)
    for index in chosen:  # from the end, so earlier offsets stay valid
        match = words[index]
        text = text[: match.start()] + _typo(match.group(), rng) + text[match.end() :]
    return text


PERTURBATIONS: dict[str, Callable[[str, random.Random], str]] = {
    "negation_flip": negation_flip,
    "distractor": distractor,
    "upper_case": upper_case,
    "typos": typos,
}


def perturb(text: str, kind: str, seed: int) -> str:
    """`text` perturbed by the named perturbation; the same (text, kind, seed) always gives the same result."""
    if kind not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {kind!r}; known kinds: {', '.join(sorted(PERTURBATIONS))}")
    return PERTURBATIONS[kind](text, random.Random(seed))
