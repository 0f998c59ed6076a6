"""A second opinion on the CRF: gradient-boosted trees over its marginals and what the note says elsewhere.

The CRF is linear in its features and sees two words either side. The stacker sees its per-class marginals,
those of the neighbours, how surely the same word is PHI elsewhere in the note and how often it recurs
there, and the word's lexical flags and rule hits, and learns their interactions ("a number after 'from'
that forms a valid date"). It is trained on out-of-fold marginals, so it learns how far to trust the CRF
on notes the CRF never saw. On pooled out-of-fold CRF readings of PhysioNet deid (5 folds grouped by
patient) a stacker like this one doubled raw token precision at recall 0.98, from 0.21 to 0.43
(docs/BENCHMARKS.md).
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier

# Word-level flags the feature extractor writes, read back as 0/1 columns.
FLAGS = ("first_name", "clinical_word", "us_place", "unknown_word", "misspelt_word", "name_and_word")
# Categorical features (their values as the extractor writes them), one ordinal column each.
CATEGORIES = {
    "number=": ("year", "d4", "two_digit_high", "d3", "d5", "d6", "month_day", "day"),
    "short_shape=": ("X", "x", "d", "Xx", "XX", "xx", "dd", "Xd", "xd", "dX", "dx"),
    "case=": ("U", "L", "M"),
    "chunk_date=": ("no", "year", "long", "valid2", "invalid2", "valid3", "invalid3"),
}
WORD_CATEGORIES = ("number=", "short_shape=")  # the others depend on the token's place in the note
NUMERIC = ("zipf=", "len=")
NEIGHBOURS = (-2, -1, 1, 2)
RULES_KEPT = 40  # the rule labels seen most often in training, each a 0/1 column (with its neighbours')


def _value(features: list[str], prefix: str) -> str | None:
    return next((f[len(prefix) :] for f in features if f.startswith(prefix)), None)


def _category(prefix: str, value: str | None) -> float:
    values = CATEGORIES[prefix]
    return float(values.index(value)) if value in values else -1.0


class PhiStacker:
    def __init__(self, rules: tuple[str, ...] = (), trees: HistGradientBoostingClassifier | None = None) -> None:
        self.rules = rules
        self.trees = trees
        self._words: dict[str, list[float]] = {}
        # feature -> (column, value) among the columns that depend on the token's place in the note: the case of
        # the note and the date form of the token's chunk (ordinal), then "rule=X" and a neighbour's "-1:rule=X"
        # or "1:rule=X" (0/1)
        self._place_columns = {
            **{f"case={v}": (0, float(j)) for j, v in enumerate(CATEGORIES["case="])},
            **{f"chunk_date={v}": (1, float(j)) for j, v in enumerate(CATEGORIES["chunk_date="])},
            **{r: (2 + j, 1.0) for j, r in enumerate(rules)},
            **{f"{offset}:{r}": (2 + len(rules) + j, 1.0) for j, r in enumerate(rules) for offset in (-1, 1)},
        }

    def __getstate__(self) -> dict:
        return {"rules": self.rules, "trees": self.trees}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["rules"], state["trees"])

    @staticmethod
    def rule_labels(feature_rows: list[list[list[str]]]) -> tuple[str, ...]:
        counts = Counter(f for rows in feature_rows for row in rows for f in row if f.startswith("rule="))
        return tuple(sorted(label for label, _ in counts.most_common(RULES_KEPT)))

    def note_matrix(self, words: list[str], features: list[list[str]], phi: np.ndarray, marginals: np.ndarray,
                    surely_found: np.ndarray) -> np.ndarray:
        """One row per token; `words` as written, `phi` the CRF's P(PHI), `marginals` its class columns."""
        n = len(features)
        lowered = [w.lower() for w in words]
        count = Counter(lowered)
        most_sure: dict[str, float] = defaultdict(float)
        for word, p in zip(lowered, phi):
            most_sure[word] = max(most_sure[word], p)
        padded = np.concatenate([[-1.0, -1.0], phi, [-1.0, -1.0]])
        in_note = [[most_sure[w], count[w], float(word[:1].isdigit())] for w, word in zip(lowered, words)]
        place = np.zeros((n, 2 + 2 * len(self.rules)))
        place[:, :2] = -1.0  # category unknown
        for i, row_features in enumerate(features):
            for feature in row_features:
                hit = self._place_columns.get(feature)
                if hit is not None:
                    place[i, hit[0]] = hit[1]
        return np.hstack([
            phi.reshape(n, 1), marginals.reshape(n, -1), surely_found.reshape(n, 1).astype(float),
            np.stack([padded[2 + offset : 2 + offset + n] for offset in NEIGHBOURS], axis=1),
            np.array(in_note, dtype=float).reshape(n, 3),
            np.array([self._word_columns(w, f) for w, f in zip(words, features)], dtype=float).reshape(n, -1),
            place,
        ])

    def _word_columns(self, word: str, row_features: list[str]) -> list[float]:
        """Columns that depend on the word alone, computed once per word."""
        cached = self._words.get(word)
        if cached is None:
            cached = [float(flag in row_features) for flag in FLAGS]
            cached.append(float(any(f.startswith("last_name_rank=") for f in row_features)))
            cached += [float(_value(row_features, prefix) or -1) for prefix in NUMERIC]
            cached += [_category(prefix, _value(row_features, prefix)) for prefix in WORD_CATEGORIES]
            if len(self._words) < 200_000:
                self._words[word] = cached
        return cached

    def fit(self, matrix: np.ndarray, is_phi: np.ndarray, seed: int = 0) -> PhiStacker:
        # Categories are ordinal-coded numbers here: declared categorical, every predict ran an encoder first,
        # which cost as much as the trees.
        self.trees = HistGradientBoostingClassifier(max_iter=150, learning_rate=0.1, max_leaf_nodes=15,
                                                    l2_regularization=1.0, random_state=seed)
        self.trees.fit(matrix, is_phi)
        return self

    def phi(self, matrix: np.ndarray) -> np.ndarray:
        """P(PHI) per row. One note's rows are few: predict_proba's OpenMP team (one per tree) cost 2 ms a tree
        when the other core was busy, 80 ms a note, against 2 ms a note for the trees walked in this thread."""
        if not len(matrix):
            return np.zeros(0)
        return 1.0 / (1.0 + np.exp(-self.trees._raw_predict(matrix, n_threads=1)[:, 0]))


def with_phi(marginals: np.ndarray, phi: np.ndarray, outside_column: int) -> np.ndarray:
    """The CRF's class marginals rescaled so that one minus P(outside) is the stacker's P(PHI): the type
    still comes from the CRF, the decision from the stacker."""
    rescaled = marginals.copy()
    inside = 1.0 - marginals[:, outside_column]
    rescaled *= np.where(inside > 0, phi / np.maximum(inside, 1e-12), 0.0)[:, None]
    rescaled[:, outside_column] = 1.0 - phi
    return rescaled
