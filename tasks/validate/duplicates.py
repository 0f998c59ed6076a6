"""Duplicate and near-duplicate notes, grouped into clusters that a split must keep together.

Exact duplicates share their normalised text (case, whitespace and punctuation ignored). Near duplicates share most
of their word 5-grams: datasketch MinHash signatures estimate the Jaccard similarity of the 5-gram sets, a datasketch
MinHashLSH index over bands of the signatures finds the candidate pairs, and a candidate pair counts when its
estimated similarity reaches the threshold. The bands are chosen so that the index misses no pair whose estimated
similarity reaches the threshold: the result is the one a comparison of every pair of signatures would give.
"""

from __future__ import annotations

import re
import zlib

from datasketch import MinHash, MinHashLSH

SHINGLE_WORDS = 5
# The estimate of a Jaccard similarity of 0.8 has a standard error of 0.035 with 128 permutations (0.05 with 64).
NUM_PERMUTATIONS = 128
_WORD = re.compile(r"[a-z0-9]+")


def normalised_words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def shingles(words: list[str]) -> set[bytes]:
    """The word 5-grams of `words`; a text shorter than that is one shingle of all its words."""
    if len(words) < SHINGLE_WORDS:
        return {" ".join(words).encode()}
    grams = zip(*(words[offset:] for offset in range(SHINGLE_WORDS)))
    return set(map(str.encode, map(" ".join, grams)))


def minhash_signatures(texts: list[str], seed: int = 0) -> list[MinHash]:
    """One MinHash of the 5-gram set of each text's normalised words; signatures with the same seed compare."""
    # CRC-32 instead of datasketch's default SHA-1 (a Python call per shingle) makes signatures over twice as fast;
    # datasketch's affine32 scheme mixes each input hash (MurmurHash3 finaliser) before permuting it, so the weaker
    # hash does no harm.
    return MinHash.bulk((shingles(normalised_words(text)) for text in texts), num_perm=NUM_PERMUTATIONS, seed=seed,
                        hashfunc=zlib.crc32)


def lsh_bands(threshold: float) -> tuple[int, int]:
    """(bands, rows per band) for which any two signatures whose estimated Jaccard similarity reaches `threshold`
    agree on a whole band, so LSH finds every such pair. Such signatures differ in at most `most_differing` positions
    and there are more bands than that, so one band holds none of them. The bands narrow as the threshold falls (one
    row each at 0.5), and unrelated texts become candidates more often: only the Jaccard check costs more.

    datasketch's own choice for a threshold (MinHashLSH without `params`) weighs missed pairs against false
    candidates: at 0.8 with 128 permutations, 9 bands of 13 rows, it misses most pairs estimated near 0.8."""
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    most_differing = max(differing for differing in range(NUM_PERMUTATIONS + 1)
                         if (NUM_PERMUTATIONS - differing) / NUM_PERMUTATIONS >= threshold)
    bands = max(most_differing + 1, 2)  # MinHashLSH needs two bands at least
    return bands, NUM_PERMUTATIONS // bands


def lsh_index(signatures: list[MinHash], threshold: float) -> MinHashLSH:
    """A MinHashLSH over `signatures`, keyed by their positions."""
    index = MinHashLSH(threshold=threshold, num_perm=NUM_PERMUTATIONS, params=lsh_bands(threshold))
    for position, signature in enumerate(signatures):
        index.insert(position, signature, check_duplication=False)
    return index


class NearDuplicateIndex:
    """Reference texts indexed once, asked for the near duplicates of any number of query texts."""

    def __init__(self, references: list[str], threshold: float, seed: int = 0) -> None:
        self.threshold, self.seed = threshold, seed
        self.signatures = minhash_signatures(references, seed)
        self.index = lsh_index(self.signatures, threshold)

    def query(self, queries: list[str]) -> list[list[int]]:
        """For each query text, the positions of the references that duplicate it or nearly do."""
        # The same normalised text gives the same signature: it shares every band and its estimate is 1.0.
        return [sorted(candidate for candidate in self.index.query(query)
                       if query.jaccard(self.signatures[candidate]) >= self.threshold)
                for query in minhash_signatures(queries, self.seed)]


def near_duplicates_of(queries: list[str], references: list[str], threshold: float, seed: int = 0) -> list[list[int]]:
    """For each query text, the positions in `references` of the texts that duplicate it or nearly do: the same
    normalised text, or an estimated 5-gram Jaccard similarity of at least `threshold`."""
    return NearDuplicateIndex(references, threshold, seed).query(queries)


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
    """A cluster number per text, numbered by first appearance: texts in one cluster are duplicates or near
    duplicates (estimated 5-gram Jaccard similarity >= `threshold`), directly or through a chain of them."""
    position_of_distinct: dict[str, int] = {}
    distinct_of_text = [position_of_distinct.setdefault(" ".join(normalised_words(text)), len(position_of_distinct))
                        for text in texts]
    # Exact duplicates share their one distinct normalised text, so a note repeated n times costs no n² comparisons.
    signatures = minhash_signatures(list(position_of_distinct), seed)
    index = lsh_index(signatures, threshold)
    clusters = UnionFind(len(signatures))
    for position, signature in enumerate(signatures):
        for candidate in index.query(signature):
            if candidate > position and signature.jaccard(signatures[candidate]) >= threshold:
                clusters.union(position, candidate)
    numbering: dict[int, int] = {}
    return [numbering.setdefault(clusters.find(distinct), len(numbering)) for distinct in distinct_of_text]
