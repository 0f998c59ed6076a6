"""Gradient-free composition: an expert for a specialty that has none, from a handful of its notes.

Search one weight per existing adapter to minimise the target loss of the examples under their
`cat` mix, plus an L1 penalty that keeps the mix small (the LoraHub recipe). The search is
Nelder-Mead within bounds, started from the uniform mix; each evaluation is one forward pass over
the examples, so a budget of 40 costs about as much as scoring 40 x `examples` notes. The best mix is
then merged into an ordinary PEFT adapter (tasks/route/mixing.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize
from tqdm import tqdm


@dataclass
class Composition:
    name: str
    experts: list[str]
    weights: list[float]
    example_loss: float               # mean target loss of the examples under the mix (without the penalty)
    start_loss: float                 # ... under the uniform mix the search started from
    evaluations: int
    objective_per_evaluation: list[float] = field(default_factory=list)


def compose(name: str, experts: list[str], example_loss: Callable[[np.ndarray], float], budget: int, l1: float,
            bound: float, progress: bool = False) -> Composition:
    """`example_loss(weights)`: mean target loss of the examples under that mix of `experts`."""
    start = np.full(len(experts), 1.0 / len(experts))
    seen: dict[tuple, tuple[float, float]] = {}
    history: list[float] = []
    bar = tqdm(total=budget, desc=f"composing {name}", unit="evaluation", disable=not progress)

    def objective(weights: np.ndarray) -> float:
        key = tuple(np.round(weights, 6))
        if key not in seen:
            loss = example_loss(weights)
            seen[key] = (loss + l1 * float(np.abs(weights).sum()), loss)
            history.append(round(seen[key][0], 5))
            bar.update(1)
        return seen[key][0]

    simplex = np.vstack([start] + [start + np.eye(len(experts))[i] * 0.5 for i in range(len(experts))])
    minimize(objective, start, method="Nelder-Mead", bounds=[(-bound, bound)] * len(experts),
                      options={"maxfev": budget, "initial_simplex": np.clip(simplex, -bound, bound), "xatol": 1e-3, "fatol": 1e-4})
    bar.close()
    best_key = min(seen, key=lambda key: seen[key][0])
    start_key = tuple(np.round(start, 6))
    # The best point evaluated is kept, which need not be where the simplex ended.
    return Composition(name, list(experts), [round(float(w), 6) for w in best_key], round(seen[best_key][1], 5),
                       round(seen[start_key][1], 5), len(seen), history)
