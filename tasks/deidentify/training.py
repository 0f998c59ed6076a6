"""Train the PHI token model on annotated corpora, keeping a held-out share of each for evaluation."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold
from tqdm import tqdm

from tasks.corpus.generate import generate_corpus
from tasks.deidentify.corpora import GoldNote, GoldSpan, read_corpus
from tasks.deidentify.lexicons import build_vocabulary
from tasks.deidentify.token_model import (
    OUTSIDE,
    FeatureExtractor,
    TokenPhiModel,
    hasher,
    holdout_group,
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


def featurize(notes: list[GoldNote], detector, vocabulary: frozenset[str], progress: bool = True):
    """Feature rows, labels and split groups of every token of `notes` (tokens of non-PHI gold types dropped)."""
    rows, labels, groups, note_index = [], [], [], []
    texts = [n.text for n in notes]
    extractor = FeatureExtractor(vocabulary)
    evidence_of_notes = tqdm(detector.evidence(texts), total=len(notes), desc="featurizing", unit="note", disable=not progress)
    for index, (note, evidence) in enumerate(zip(notes, evidence_of_notes)):
        tokens, features = extractor.note_features(note.text, evidence)
        for row, label in zip(features, token_labels(tokens, note.spans)):
            if label is not None:
                rows.append(row)
                labels.append(label)
                groups.append(note.split_group)
                note_index.append(index)
    return rows, np.array(labels), np.array(groups), np.array(note_index)


def _classifier(params: DeidModelParams) -> LogisticRegression:
    return LogisticRegression(C=params.regularization, max_iter=300, class_weight={OUTSIDE: params.outside_weight})


def threshold_for_recall(phi_probability: np.ndarray, is_phi: np.ndarray, target_recall: float) -> float:
    """The highest threshold whose recall over PHI tokens still reaches `target_recall`."""
    scores = np.sort(phi_probability[is_phi])
    allowed_misses = int(np.floor((1 - target_recall) * len(scores)))
    return float(scores[allowed_misses]) if len(scores) else 0.5


def train_token_model(params: DeidModelParams, root: Path, detector, progress: bool = True) -> tuple[TokenPhiModel, dict]:
    started = time.perf_counter()
    sources = available_sources(params.sources, root)
    notes, weights, calibrating = [], [], []
    for source in sources:
        part = source_notes(source, root, "train")
        notes += part
        weights += [source.weight] * len(part)
        calibrating += [source.calibrate] * len(part)
    vocabulary_paths = [root / p for p in params.vocabulary if (root / p).exists()]
    vocabulary = build_vocabulary(vocabulary_paths) if vocabulary_paths else frozenset()
    rows, labels, groups, note_index = featurize(notes, detector, vocabulary, progress)
    sample_weight = np.array(weights)[note_index]
    calibration = np.array(calibrating)[note_index]
    if not calibration.any():
        calibration[:] = True
    features = hasher().transform(rows)

    # Out-of-fold probabilities give an honest threshold for the recall we want.
    out_of_fold = np.zeros(len(labels))
    folds = GroupKFold(n_splits=params.threshold_folds)
    for train_index, test_index in tqdm(list(folds.split(features, labels, groups)), desc="threshold folds", disable=not progress):
        fold_model = _classifier(params).fit(features[train_index], labels[train_index], sample_weight=sample_weight[train_index])
        outside = list(fold_model.classes_).index(OUTSIDE)
        out_of_fold[test_index] = 1 - fold_model.predict_proba(features[test_index])[:, outside]
    is_phi = (labels != OUTSIDE)[calibration]
    out_of_fold = out_of_fold[calibration]
    threshold = threshold_for_recall(out_of_fold, is_phi, params.target_recall)
    detected = out_of_fold >= threshold
    classifier = _classifier(params).fit(features, labels, sample_weight=sample_weight)
    report = {
        "sources": [s.path or f"synthetic:{s.notes}" for s in sources],
        "vocabulary_words": len(vocabulary),
        "train_notes": len(notes), "train_tokens": int(len(labels)), "train_phi_tokens": int((labels != OUTSIDE).sum()),
        "features": int(features.getnnz(axis=0).astype(bool).sum()), "threshold": round(threshold, 4),
        "cv_recall": round(float((detected & is_phi).sum() / max(is_phi.sum(), 1)), 4),
        "cv_precision": round(float((detected & is_phi).sum() / max(detected.sum(), 1)), 4),
        "seconds": round(time.perf_counter() - started, 1),
    }
    return TokenPhiModel(classifier, vocabulary, threshold), report


def train_and_save(params: DeidentifyParams, root: Path, progress: bool = True) -> dict:
    """Train on the configured sources, with rule and Presidio evidence, and save to `model.path`."""
    from tasks.deidentify.engine import PhiDetector

    rules_only = PhiDetector(params.model_copy(update={"use_model": False}))
    model, report = train_token_model(params.model, root, rules_only, progress)
    model.save(root / params.model.path)
    return report
