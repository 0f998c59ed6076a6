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
        # "rule=X" -> its column; "-1:rule=X" and "1:rule=X" (a neighbour's hit) -> the column after all rules
        self._rule_columns = {**{r: j for j, r in enumerate(rules)}, **{f"-1:{r}": len(rules) + j for j, r in enumerate(rules)},
                              **{f"1:{r}": len(rules) + j for j, r in enumerate(rules)}}

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
        lowered = [w.lower() for w in words]
        count = Counter(lowered)
        most_sure: dict[str, float] = defaultdict(float)
        for word, p in zip(lowered, phi):
            most_sure[word] = max(most_sure[word], p)
        padded = np.concatenate([[-1.0, -1.0], phi, [-1.0, -1.0]])
        rows = []
        for i, row_features in enumerate(features):
            row = [phi[i], *marginals[i], float(surely_found[i])]
            row += [padded[i + 2 + offset] for offset in NEIGHBOURS]
            row += [most_sure[lowered[i]], count[lowered[i]], float(words[i][:1].isdigit())]
            row += self._word_columns(words[i], row_features)
            case, chunk_date = _value(row_features, "case="), _value(row_features, "chunk_date=")
            row += [_category("case=", case), _category("chunk_date=", chunk_date)]
            rules = [0.0] * (2 * len(self.rules))
            for feature in row_features:
                column = self._rule_columns.get(feature)
                if column is not None:
                    rules[column] = 1.0
            rows.append(row + rules)
        return np.array(rows, dtype=float).reshape(len(features), -1)

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
