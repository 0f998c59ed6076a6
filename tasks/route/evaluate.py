"""How well a router routes, and what its routes are worth downstream.

- routing: accuracy against the specialty labels, the confusion matrix, each expert's share of the
  routing weight and the entropy of those shares (near 0 when a router collapses onto one expert);
- downstream: mean target loss and ROUGE-L of the summaries, on held-out notes, for every scheme
  (base model, multi-task adapter, router, oracle expert, uniform mix).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import confusion_matrix as sklearn_confusion_matrix  # noqa: E402


def confusion_matrix(true: list[int], predicted: list[int], classes: int) -> list[list[int]]:
    """Rows: the true expert, columns: the routed one; every expert has a row, used or not."""
    if not true:
        return [[0] * classes for _ in range(classes)]
    return sklearn_confusion_matrix(true, predicted, labels=list(range(classes))).tolist()


def utilisation(weights: torch.Tensor, experts: list[str]) -> dict:
    """Each expert's share of all routing weight, and the entropy of the shares in bits (log2 of the
    number of experts when use is even, 0 when one expert takes everything)."""
    total = weights.sum(0)
    shares = total / total.sum() if total.sum() > 0 else total
    entropy = -sum(float(s) * math.log2(float(s)) for s in shares if s > 0)
    per_request = weights.clamp_min(1e-12)
    request_entropy = float(-(weights * per_request.log2()).sum(-1).mean()) if len(weights) else 0.0
    return {"share": {e: round(float(s), 4) for e, s in zip(experts, shares)}, "entropy_bits": round(entropy, 4),
            "max_entropy_bits": round(math.log2(len(experts)), 4), "mean_request_entropy_bits": round(request_entropy, 4),
            "fallback_share": round(float((weights.sum(-1) == 0).float().mean()), 4) if len(weights) else 0.0}


def routing_report(probabilities: torch.Tensor, weights: torch.Tensor, labels: torch.Tensor, experts: list[str]) -> dict:
    predicted = probabilities.argmax(-1)
    return {"accuracy": round(float((predicted == labels).float().mean()), 4) if len(labels) else float("nan"),
            "requests": len(labels),
            "confusion": confusion_matrix(labels.tolist(), predicted.tolist(), len(experts)),
            "utilisation": utilisation(weights, experts)}


def plot_confusion(matrix: list[list[int]], experts: list[str], title: str, path: Path) -> Path:
    figure, axis = plt.subplots(figsize=(1.0 + 0.8 * len(experts), 0.8 + 0.7 * len(experts)))
    axis.imshow(matrix, cmap="Blues")
    axis.set_xticks(range(len(experts)), experts, rotation=45, ha="right")
    axis.set_yticks(range(len(experts)), experts)
    axis.set(xlabel="routed to (most probable)", ylabel="true expert", title=title)
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            axis.text(j, i, str(count), ha="center", va="center", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_utilisation(report: dict, title: str, path: Path) -> Path:
    shares = report["share"]
    figure, axis = plt.subplots(figsize=(1.5 + 0.7 * len(shares), 3.2))
    axis.bar(list(shares), list(shares.values()))
    axis.set(ylabel="share of routing weight",
             title=f"{title}: entropy {report['entropy_bits']:.2f} of {report['max_entropy_bits']:.2f} bits")
    axis.tick_params(axis="x", rotation=45)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_downstream(rows: list[dict], path: Path) -> Path:
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    names = [r["system"] for r in rows]
    axes[0].bar(names, [r["target_loss"] for r in rows])
    axes[0].set(title="held-out target loss (lower is better)")
    axes[1].bar(names, [r.get("rouge_l") or 0 for r in rows])
    axes[1].set(title="held-out ROUGE-L (higher is better)")
    for axis in axes:
        axis.tick_params(axis="x", rotation=30)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
