"""Safety flags on served answers, as evaluation raises them on held-out ones.

An answer is flagged for a critical error (a drug, diagnosis or negation its source does not support),
for a next-token entropy or energy above what the routed system's top `flag_share` of validation outputs
reached (thresholds set once, in the route stage, on the validation split: notes and questions have
their own scales), and when the router was too unsure to pick an expert. Any flag means `needs_review`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from tasks.evaluate.clinical_terms import critical_errors
from tasks.finetune.examples import Request

SIGNALS = ("entropy", "energy")


@dataclass
class SafetyThresholds:
    flag_share: float = 0.1
    notes: dict[str, float] = field(default_factory=dict)       # signal -> threshold (empty: not calibrated)
    questions: dict[str, float] = field(default_factory=dict)
    calibrated_on: dict[str, int] = field(default_factory=dict)  # how many validation outputs of each kind

    @classmethod
    def from_dict(cls, values: dict | None) -> SafetyThresholds:
        return cls(**(values or {}))

    def to_dict(self) -> dict:
        return asdict(self)

    def flags(self, request: Request, text: str, entropy: float, energy: float, route: dict | None = None) -> list[str]:
        flags = [f"critical error, {e.kind.replace('_', ' ')}: {e.term}" for e in critical_errors(request.source, text)]
        thresholds = self.questions if request.is_question else self.notes
        for signal, value in zip(SIGNALS, (entropy, energy)):
            if signal in thresholds and value >= thresholds[signal]:
                flags.append(f"high {signal} ({value:.2f} >= {thresholds[signal]:.2f}, the top {self.flag_share:.0%} on validation)")
        if route is not None and route.get("fallback"):
            flags.append("router unsure: the base model answered")
        return flags


def calibrate(outputs: list[tuple[bool, float, float]], flag_share: float) -> SafetyThresholds:
    """Thresholds from validation outputs given as (is_question, entropy, energy): each signal's
    (1 - flag_share) quantile among outputs of the same kind."""
    thresholds = SafetyThresholds(flag_share)
    for is_question, kind in ((False, "notes"), (True, "questions")):
        rows = [(entropy, energy) for question, entropy, energy in outputs if question == is_question]
        thresholds.calibrated_on[kind] = len(rows)
        if len(rows) > 1 and flag_share > 0:
            values = np.array(rows)
            setattr(thresholds, kind, {s: float(np.quantile(values[:, k], 1 - flag_share)) for k, s in enumerate(SIGNALS)})
    return thresholds
