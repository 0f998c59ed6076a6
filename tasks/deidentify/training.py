"""Train the PHI token model on every annotated corpus: a CRF, a stacker over its out-of-fold readings, and a
decision threshold set by grouped cross-validation for the target recall. No share of any corpus is held out:
`medlora deid cv` measures the whole procedure with cross-validation grouped by patient instead."""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.model_selection import GroupKFold
from tqdm import tqdm

from tasks.corpus.generate import generate_corpus
from tasks.deidentify.corpora import GoldNote, GoldSpan, read_corpus
from tasks.deidentify.engine import EDGE_WORDS, PhiDetector, PhiSpan, finish_spans
from tasks.deidentify.lexicons import build_vocabulary
from tasks.deidentify.model_card import write_model_card
from tasks.deidentify.resynthesis import resynthesize
from tasks.deidentify.stacker import PhiStacker, with_phi
from tasks.deidentify.token_model import (
    OUTSIDE,
    FeatureExtractor,
    TokenPhiModel,
    fit_crf,
    phi_probability,
    spans_from_tokens,
    surely_found,
    token_labels,
)
from tasks.params import DeidentifyParams, DeidModelParams, DeidSource

log = logging.getLogger(__name__)


def source_notes(source: DeidSource, root: Path) -> list[GoldNote]:
    if source.format == "synthetic":
        corpus = generate_corpus(notes=source.notes, patients=max(1, source.notes // 3), seed=source.seed)
        return [GoldNote(n.note_id, n.text, n.patient_id, [GoldSpan(s.start, s.end, s.entity_type) for s in n.spans])
                for n in corpus]
    return read_corpus(root / source.path, source.format)


def source_name(source: DeidSource) -> str:
    return source.path or f"synthetic:{source.notes}"


def available_sources(sources: list[DeidSource], root: Path) -> list[DeidSource]:
    found = []
    for source in sources:
        if source.format == "synthetic" or (root / source.path).exists():
            found.append(source)
        else:
            log.warning("deid training source %s not found; training without it", root / source.path)
    return found


@dataclass
class NoteSequence:
    """One note's tokens as the CRF sees them: features, labels, and which tokens rules replace anyway."""

    note: GoldNote
    tokens: list[tuple[int, int]]
    features: list[list[str]]
    labels: list[str]
    surely_found: np.ndarray


def featurize(notes: list[GoldNote], detector, vocabulary: frozenset[str], progress: bool = True) -> list[NoteSequence]:
    """Token features and labels of every note (tokens of gold types that are not PHI are left out)."""
    extractor = FeatureExtractor(vocabulary)
    evidence_of_notes = tqdm(detector.evidence([n.text for n in notes]), total=len(notes), desc="featurizing",
                             unit="note", disable=not progress)
    sequences = []
    for note, evidence in zip(notes, evidence_of_notes):
        tokens, features = extractor.note_features(note.text, evidence)
        kept = [(t, f, label) for t, f, label in zip(tokens, features, token_labels(tokens, note.spans)) if label is not None]
        tokens = [t for t, _, _ in kept]
        sequences.append(NoteSequence(note, tokens, [f for _, f, _ in kept], [label for _, _, label in kept],
                                      surely_found(tokens, evidence)))
    return sequences


def _fit(sequences: list[NoteSequence], weights: list[int], params: DeidModelParams) -> bytes:
    """A note of weight w counts w times (crfsuite has no instance weights)."""
    return fit_crf([(s.features, s.labels) for s, w in zip(sequences, weights) for _ in range(w)],
                   params.l1, params.l2, params.iterations)


MAX_THRESHOLD = 0.5  # on an easy corpus (our synthetic notes alone) the search would go near 1.0, and a
                     # token the model finds more likely PHI than not would go through


@dataclass
class OutOfFold:
    """A calibration note as a model that never saw it reads it: class probabilities and P(PHI) per token."""

    sequence: NoteSequence
    model: TokenPhiModel
    marginals: np.ndarray
    phi: np.ndarray


@dataclass
class TrainingSet:
    """Featurized notes of every source, with what training needs to know about each."""

    sequences: list[NoteSequence] = field(default_factory=list)
    weights: list[int] = field(default_factory=list)
    calibrating: list[bool] = field(default_factory=list)  # the threshold is set for the target recall on these
    copies: list[bool] = field(default_factory=list)       # re-synthesized: trained on, never read out of fold
    sources: list[str] = field(default_factory=list)
    vocabulary: frozenset[str] = frozenset()

    @property
    def groups(self) -> list[str]:
        """Split groups: a patient (or template) of one source; a copy stays with its original."""
        return [f"{source}|{s.note.split_group}" for source, s in zip(self.sources, self.sequences)]

    def originals(self, index) -> list[int]:
        return [i for i in index if not self.copies[i]]


def gather(params: DeidModelParams, root: Path, detector, progress: bool = True) -> TrainingSet:
    """Every available source, its notes re-synthesized `source.resynthesis` times, featurized once."""
    data = TrainingSet()
    vocabulary_paths = [root / p for p in params.vocabulary if (root / p).exists()]
    data.vocabulary = build_vocabulary(vocabulary_paths) if vocabulary_paths else frozenset()
    notes: list[GoldNote] = []
    rng = random.Random(params.seed)
    for source in available_sources(params.sources, root):
        for note in source_notes(source, root):
            variants = [note] + [resynthesize(note, rng, params.resynthesis_case_flip) for _ in range(source.resynthesis)]
            for copy, variant in enumerate(variants):
                notes.append(variant)
                data.weights.append(max(1, round(source.weight)))
                data.calibrating.append(source.calibrate)
                data.copies.append(copy > 0)
                data.sources.append(source_name(source))
    if not any(data.calibrating):
        data.calibrating = [True] * len(notes)
    data.sequences = featurize(notes, detector, data.vocabulary, progress)
    return data


def _aligned(marginals: np.ndarray, classes: np.ndarray, canonical: list[str]) -> np.ndarray:
    """Marginals in the column order of `canonical` (a fold's CRF may not know every label)."""
    out = np.zeros((len(marginals), len(canonical)))
    for column, label in enumerate(classes):
        out[:, canonical.index(label)] = marginals[:, column]
    return out


def fit_model(data: TrainingSet, index: list[int], params: DeidModelParams, propagate_score: float,
              progress: bool = True) -> tuple[TokenPhiModel, dict]:
    """The token model from the notes at `index` alone: a CRF on all of them; a stacker on the CRF's
    out-of-fold readings of the originals; the threshold at which the stacked, finished detection reaches
    the target recall out of fold on the calibrating notes."""
    index = list(index)
    model = TokenPhiModel(_fit([data.sequences[i] for i in index], [data.weights[i] for i in index], params),
                          data.vocabulary, MAX_THRESHOLD)
    canonical = list(model.classes)
    originals = [i for i in data.originals(index) if len(data.sequences[i].tokens)]
    groups = np.array(data.groups)
    marginals: dict[int, np.ndarray] = {}
    folds = list(GroupKFold(n_splits=params.threshold_folds).split(index, groups=groups[index]))
    for train, test in tqdm(folds, desc="CRF folds", disable=not progress):
        train_index = [index[i] for i in train]
        fold = TokenPhiModel(_fit([data.sequences[i] for i in train_index], [data.weights[i] for i in train_index], params),
                             data.vocabulary, MAX_THRESHOLD)
        for i in set(originals).intersection(index[j] for j in test):
            marginals[i] = _aligned(fold.marginals(data.sequences[i].features), fold.classes, canonical)

    stacker = PhiStacker(PhiStacker.rule_labels([data.sequences[i].features for i in originals]))
    matrices = {i: model.stacker_matrix(s.note.text, s.tokens, s.features, marginals[i], s.surely_found, stacker)
                for i in originals for s in [data.sequences[i]]}
    labels = {i: np.array(data.sequences[i].labels) != OUTSIDE for i in originals}
    stacked_phi: dict[int, np.ndarray] = {}
    for train, test in GroupKFold(n_splits=params.threshold_folds).split(originals, groups=groups[originals]):
        fold_stacker = PhiStacker(stacker.rules).fit(np.vstack([matrices[originals[j]] for j in train]),
                                                     np.concatenate([labels[originals[j]] for j in train]), params.seed)
        fold_phi = fold_stacker.phi(np.vstack([matrices[originals[j]] for j in test]))
        for j, part in zip(test, np.split(fold_phi, np.cumsum([len(matrices[originals[j]]) for j in test])[:-1])):
            stacked_phi[originals[j]] = part
    items = []
    for i in originals:
        if data.calibrating[i]:
            s = data.sequences[i]
            probabilities = with_phi(marginals[i], stacked_phi[i], model.outside_column)
            items.append(OutOfFold(s, model, probabilities,
                                   phi_probability(s.note.text, s.tokens, probabilities, model.outside_column)))
    threshold, cv_recall, cv_precision = threshold_for_recall(items, params.target_recall, propagate_score)
    model.stacker = stacker.fit(np.vstack([matrices[i] for i in originals]), np.concatenate([labels[i] for i in originals]),
                                params.seed)
    model.threshold = threshold
    all_labels = np.concatenate([data.sequences[i].labels for i in index if data.sequences[i].labels])
    return model, {
        "train_notes": len(originals), "resynthesized_copies": len(index) - len(data.originals(index)),
        "train_tokens": int(len(all_labels)), "train_phi_tokens": int((all_labels != OUTSIDE).sum()),
        "threshold": round(threshold, 5), "inner_cv_recall": round(cv_recall, 4), "inner_cv_precision": round(cv_precision, 4),
    }


def detected_tokens(item: OutOfFold, threshold: float, propagate_score: float) -> np.ndarray:
    """Which tokens the detector replaces at `threshold`: model spans and sure rule hits, finished as
    the detector finishes them (edges trimmed, names propagated through the note)."""
    s, model = item.sequence, item.model
    spans = [PhiSpan(t.start, t.end, t.entity_type, t.score) for t in spans_from_tokens(
        s.note.text, s.tokens, item.marginals, model.classes, model.outside_column, threshold,
        phi=np.where(s.surely_found, 1.0, item.phi))]
    found = finish_spans(s.note.text, spans, propagate_score, model.vocabulary)
    return np.array([any(f.start < end and start < f.end for f in found) for start, end in s.tokens], dtype=bool)


def threshold_for_recall(items: list[OutOfFold], target_recall: float, propagate_score: float) -> tuple[float, float, float]:
    """The highest threshold (at most MAX_THRESHOLD) at which the finished detection reaches `target_recall`
    of PHI tokens, found by bisection over the PHI tokens' own probabilities; with its recall and precision.

    Gold tokens the detector leaves out by design (EDGE_WORDS: "Hospital" of "Mercy Hospital" in corpora
    that mark it) are not counted. When no threshold reaches the target, the lowest candidate is taken."""
    is_phi = np.concatenate([
        [label != OUTSIDE and i.sequence.note.text[start:end].lower() not in EDGE_WORDS
         for (start, end), label in zip(i.sequence.tokens, i.sequence.labels)] for i in items]).astype(bool)

    def recall_precision(threshold: float) -> tuple[float, float]:
        detected = np.concatenate([detected_tokens(i, threshold, propagate_score) for i in items])
        hits = (detected & is_phi).sum()
        return float(hits / max(is_phi.sum(), 1)), float(hits / max(detected.sum(), 1))

    phi = np.concatenate([i.phi for i in items])
    candidates = np.unique(np.clip(phi[is_phi], 0.0, MAX_THRESHOLD))
    candidates = candidates[candidates > 0] if (candidates > 0).any() else np.array([MAX_THRESHOLD])
    low, high = 0, len(candidates) - 1  # recall falls as the threshold rises; find the last candidate that holds
    best = float(candidates[0])
    while low <= high:
        middle = (low + high) // 2
        if recall_precision(candidates[middle])[0] >= target_recall:
            best, low = float(candidates[middle]), middle + 1
        else:
            high = middle - 1
    recall, precision = recall_precision(best)
    if recall < target_recall:
        log.warning("no threshold reaches recall %.3f in cross-validation (best %.3f at %.5f)", target_recall, recall, best)
    return best, recall, precision


def train_token_model(params: DeidModelParams, root: Path, detector, propagate_score: float,
                      progress: bool = True) -> tuple[TokenPhiModel, dict]:
    started = time.perf_counter()
    data = gather(params, root, detector, progress)
    model, report = fit_model(data, range(len(data.sequences)), params, propagate_score, progress)
    corpora = {}
    for name, copy in zip(data.sources, data.copies):
        corpora.setdefault(name, {"notes": 0, "resynthesized_copies": 0})["resynthesized_copies" if copy else "notes"] += 1
    return model, {"sources": corpora, "vocabulary_words": len(data.vocabulary), **report,
                   "seconds": round(time.perf_counter() - started, 1)}


def rules_only(params: DeidentifyParams) -> PhiDetector:
    """The detector without a token model: its rule and Presidio evidence is what the model learns from."""
    return PhiDetector(params.model_copy(update={"use_model": False}))


def check_sources(params: DeidModelParams, root: Path, skip_missing: bool) -> None:
    """Stop before training a weaker model than configured: every corpus and vocabulary file must be there."""
    missing = [p for p in [s.path for s in params.sources if s.format != "synthetic"] + params.vocabulary if not (root / p).exists()]
    if missing and not skip_missing:
        raise FileNotFoundError(
            f"deidentify.model: {', '.join(str(root / p) for p in missing)} not found. The shipped model was trained on them; "
            "put them there, change deidentify.model.sources / vocabulary in params.yaml, or pass --skip-missing "
            "to train without them (a weaker model)")


def with_added_notes(params: DeidentifyParams, paths: list[Path]) -> DeidentifyParams:
    """The configured sources plus annotated JSONL files (a hospital's own notes); the threshold is set for them too."""
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"{path}: annotated notes not found")
    added = [DeidSource(path=str(path), format="jsonl", calibrate=True) for path in paths]
    return params.model_copy(update={"model": params.model.model_copy(update={"sources": params.model.sources + added})})


def train_and_save(params: DeidentifyParams, root: Path, progress: bool = True) -> dict:
    """Train on the configured sources; save the model to `model.path` and its card beside it."""
    model, report = train_token_model(params.model, root, rules_only(params), params.propagate_score, progress)
    path = root / params.model.path
    model.save(path, card=report)
    write_model_card(path, report, params.model)
    return report
