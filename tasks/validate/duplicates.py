"""Duplicate and near-duplicate notes, grouped into clusters that a split must keep together.

Exact duplicates share their normalised text (case, whitespace and punctuation ignored). Near duplicates share most of their word 5-grams: MinHash signatures estimate the Jaccard
similarity of the 5-gram sets, locality-sensitive hashing over bands of the signature finds the
candidate pairs, and a pair joins a cluster when its estimated similarity reaches the threshold.
"""

from __future__ import annotations

import re
import zlib
from collections import defaultdict

import numpy as np

SHINGLE_WORDS = 5
SIGNATURE_SIZE = 64
BANDS = 16  # 16 bands of 4 rows: pairs with Jaccard 0.8 are candidates with probability 0.9996
MERSENNE_PRIME = (1 << 61) - 1
_WORD = re.compile(r"[a-z0-9]+")


def normalised_words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _signature(words: list[str], a: np.ndarray, b: np.ndarray) -> np.ndarray:
    count = max(len(words) - SHINGLE_WORDS + 1, 1)
    shingles = np.array([zlib.crc32(" ".join(words[i : i + SHINGLE_WORDS]).encode()) for i in range(count)],
                        dtype=np.uint64)
    hashed = (a[:, None] * shingles[None, :] + b[:, None]) % MERSENNE_PRIME
    return hashed.min(axis=1)


class UnionFind:
    def __init__(self, size: int) -> None:
        self.parent = list(range(size))

    def find(self, item: int) -> int:
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]
            item = self.parent[item]
        return item

    def union(self, left: int, right: int) -> None:
        self.parent[self.find(left)] = self.find(right)


def duplicate_clusters(texts: list[str], threshold: float = 0.8, seed: int = 0) -> list[int]:
    """A cluster number per text: texts in one cluster are duplicates or near duplicates (estimated
    5-gram Jaccard similarity >= `threshold`), directly or through a chain of them."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 1 << 31, SIGNATURE_SIZE, dtype=np.uint64)
    b = rng.integers(0, 1 << 31, SIGNATURE_SIZE, dtype=np.uint64)
    words = [normalised_words(t) for t in texts]
    signatures = np.stack([_signature(w, a, b) for w in words]) if texts else np.zeros((0, SIGNATURE_SIZE))
    clusters = UnionFind(len(texts))
    first_with_words: dict[str, int] = {}
    for index, w in enumerate(words):
        first = first_with_words.setdefault(" ".join(w), index)
        clusters.union(index, first)
    rows = SIGNATURE_SIZE // BANDS
    for band in range(BANDS):
        buckets: dict[bytes, list[int]] = defaultdict(list)
        for index, signature in enumerate(signatures):
            buckets[signature[band * rows : (band + 1) * rows].tobytes()].append(index)
        for members in buckets.values():
            for other in members[1:]:
                if clusters.find(other) != clusters.find(members[0]) and (
                        np.mean(signatures[other] == signatures[members[0]]) >= threshold):
                    clusters.union(other, members[0])
    roots = [clusters.find(i) for i in range(len(texts))]
    numbering: dict[int, int] = {}
    return [numbering.setdefault(root, len(numbering)) for root in roots]
