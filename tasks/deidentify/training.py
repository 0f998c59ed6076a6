"""Train the PHI token model on annotated corpora, keeping a held-out share of each for evaluation."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import GroupKFold
from tqdm import tqdm

from tasks.corpus.generate import generate_corpus
from tasks.deidentify.corpora import GoldNote, GoldSpan, read_corpus
from tasks.deidentify.engine import EDGE_WORDS, PhiDetector, PhiSpan, finish_spans
from tasks.deidentify.lexicons import build_vocabulary
from tasks.deidentify.token_model import (
    OUTSIDE,
    FeatureExtractor,
    TokenPhiModel,
    fit_crf,
    holdout_group,
    phi_probability,
    spans_from_tokens,
    token_labels,
)
from tasks.params import DeidentifyParams, DeidModelParams, DeidSource

log = logging.getLogger(__name__)


def source_notes(source: DeidSource, root: Path, part: str) -> list[GoldNote]:
    """The `train` or `heldout` part of one source; split by patient (or template), never by note."""
    if source.format == "synthetic":
        corpus = generate_corpus(notes=source.notes, patients=max(1, source.notes // 3), seed=source.seed)
        notes = [GoldNote(n.note_id, n.text, n.patient_id, [GoldSpan(s.start, s.end, s.entity_type) for s in n.spans])
                 for n in corpus]
    else:
        notes = read_corpus(root / source.path, source.format)
    keep_heldout = part == "heldout"
    return [n for n in notes if holdout_group(n.split_group, source.holdout) == keep_heldout]


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
        sure = [(e.start, e.end) for e in evidence if e.sure]
        surely_found = np.array([any(s < end and start < e for s, e in sure) for start, end in tokens], dtype=bool)
        sequences.append(NoteSequence(note, tokens, [f for _, f, _ in kept], [label for _, _, label in kept], surely_found))
    return sequences


def _fit(sequences: list[NoteSequence], weights: list[int], params: DeidModelParams) -> bytes:
    """A corpus of weight w counts w times (crfsuite has no instance weights)."""
    return fit_crf([(s.features, s.labels) for s, w in zip(sequences, weights) for _ in range(w)],
                   params.l1, params.l2, params.iterations)


MAX_THRESHOLD = 0.5  # on an easy corpus (our synthetic notes alone) the search would go near 1.0, and a
                     # token the model finds more likely PHI than not would go through


@dataclass
class OutOfFold:
    """A calibration note as a model that never saw it reads it: marginals and P(PHI) per token."""

    sequence: NoteSequence
    model: TokenPhiModel
    marginals: np.ndarray
    phi: np.ndarray

    @classmethod
    def read(cls, sequence: NoteSequence, model: TokenPhiModel) -> OutOfFold:
        marginals = model.marginals(sequence.features)
        return cls(sequence, model, marginals,
                   phi_probability(sequence.note.text, sequence.tokens, marginals, model.outside_column))


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
    sources = available_sources(params.sources, root)
    notes, weights, calibrating = [], [], []
    for source in sources:
        part = source_notes(source, root, "train")
        notes += part
        weights += [max(1, round(source.weight))] * len(part)
        calibrating += [source.calibrate] * len(part)
    if not any(calibrating):
        calibrating = [True] * len(notes)
    vocabulary_paths = [root / p for p in params.vocabulary if (root / p).exists()]
    vocabulary = build_vocabulary(vocabulary_paths) if vocabulary_paths else frozenset()
    sequences = featurize(notes, detector, vocabulary, progress)

    # Out-of-fold readings give an honest threshold for the recall we want, measured on what the detector
    # would replace: sure rule hits count as found, and so do mentions that a found name propagates to.
    calibration = {i for i in range(len(sequences)) if calibrating[i] and len(sequences[i].tokens)}
    out_of_fold: dict[int, OutOfFold] = {}
    groups = [s.note.split_group for s in sequences]
    folds = GroupKFold(n_splits=params.threshold_folds).split(sequences, groups=groups)
    for train_index, test_index in tqdm(list(folds), desc="threshold folds", disable=not progress):
        fold_model = TokenPhiModel(_fit([sequences[i] for i in train_index], [weights[i] for i in train_index], params),
                                   vocabulary, MAX_THRESHOLD)
        for i in calibration.intersection(test_index):
            out_of_fold[i] = OutOfFold.read(sequences[i], fold_model)
    threshold, cv_recall, cv_precision = threshold_for_recall(list(out_of_fold.values()), params.target_recall, propagate_score)
    model = TokenPhiModel(_fit(sequences, weights, params), vocabulary, threshold)
    labels = np.concatenate([s.labels for s in sequences if s.labels])
    report = {
        "sources": [s.path or f"synthetic:{s.notes}" for s in sources],
        "vocabulary_words": len(vocabulary),
        "train_notes": len(notes), "train_tokens": int(len(labels)), "train_phi_tokens": int((labels != OUTSIDE).sum()),
        "threshold": round(model.threshold, 5),
        "cv_recall": round(cv_recall, 4),
        "cv_precision": round(cv_precision, 4),
        "seconds": round(time.perf_counter() - started, 1),
    }
    return model, report


def train_and_save(params: DeidentifyParams, root: Path, progress: bool = True) -> dict:
    """Train on the configured sources, with rule and Presidio evidence, and save to `model.path`."""
    rules_only = PhiDetector(params.model_copy(update={"use_model": False}))
    model, report = train_token_model(params.model, root, rules_only, params.propagate_score, progress)
    model.save(root / params.model.path)
    return report
