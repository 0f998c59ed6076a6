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
from tasks.deidentify.lexicons import build_vocabulary
from tasks.deidentify.token_model import (
    OUTSIDE,
    FeatureExtractor,
    TokenPhiModel,
    fit_crf,
    holdout_group,
    phi_probability,
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


def threshold_for_recall(phi_probability: np.ndarray, is_phi: np.ndarray, target_recall: float) -> float:
    """The highest threshold whose recall over PHI tokens still reaches `target_recall`, at most 0.5.

    On an easy corpus (our synthetic notes alone) that quantile sits near 1.0, and a token the model
    finds more likely PHI than not would go through: hence the cap.
    """
    scores = np.sort(phi_probability[is_phi])
    allowed_misses = int(np.floor((1 - target_recall) * len(scores)))
    return min(float(scores[allowed_misses]), 0.5) if len(scores) else 0.5


def train_token_model(params: DeidModelParams, root: Path, detector, progress: bool = True) -> tuple[TokenPhiModel, dict]:
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

    # Out-of-fold probabilities give an honest threshold for the recall we want. Tokens that trusted
    # rules replace anyway count as found, as they are when the detector runs: the model need not
    # lower its threshold for them.
    phi_of_note: list[np.ndarray] = [np.zeros(0)] * len(sequences)
    groups = [s.note.split_group for s in sequences]
    folds = GroupKFold(n_splits=params.threshold_folds).split(sequences, groups=groups)
    for train_index, test_index in tqdm(list(folds), desc="threshold folds", disable=not progress):
        fold_model = TokenPhiModel(_fit([sequences[i] for i in train_index], [weights[i] for i in train_index], params),
                                   vocabulary, 0.5)
        for i in test_index:
            s = sequences[i]
            phi = phi_probability(s.note.text, s.tokens, fold_model.marginals(s.features), fold_model.outside_column)
            phi_of_note[i] = np.where(s.surely_found, 1.0, phi)
    calibration = [i for i in range(len(sequences)) if calibrating[i] and len(sequences[i].tokens)]
    out_of_fold = np.concatenate([phi_of_note[i] for i in calibration])
    is_phi = np.concatenate([np.array(sequences[i].labels) != OUTSIDE for i in calibration])
    threshold = threshold_for_recall(out_of_fold, is_phi, params.target_recall)
    detected = out_of_fold >= threshold
    model = TokenPhiModel(_fit(sequences, weights, params), vocabulary, threshold)
    labels = np.concatenate([s.labels for s in sequences if s.labels])
    report = {
        "sources": [s.path or f"synthetic:{s.notes}" for s in sources],
        "vocabulary_words": len(vocabulary),
        "train_notes": len(notes), "train_tokens": int(len(labels)), "train_phi_tokens": int((labels != OUTSIDE).sum()),
        "threshold": round(threshold, 5),
        "cv_recall": round(float((detected & is_phi).sum() / max(is_phi.sum(), 1)), 4),
        "cv_precision": round(float((detected & is_phi).sum() / max(detected.sum(), 1)), 4),
        "seconds": round(time.perf_counter() - started, 1),
    }
    return model, report


def train_and_save(params: DeidentifyParams, root: Path, progress: bool = True) -> dict:
    """Train on the configured sources, with rule and Presidio evidence, and save to `model.path`."""
    from tasks.deidentify.engine import PhiDetector

    rules_only = PhiDetector(params.model_copy(update={"use_model": False}))
    model, report = train_token_model(params.model, root, rules_only, progress)
    model.save(root / params.model.path)
    return report
