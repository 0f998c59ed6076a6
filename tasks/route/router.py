"""A router: request features -> a probability per expert -> mixing weights over the top k, or none.

Two scorers, one per family of strategy: a linear layer (supervised and reinforcement training) and
prototypes in a learned embedding (contrastive training). Both read both views of a request (the
standardised hidden state and the TF-IDF bag, see tasks/route/features.py) and give logits over the
experts. A route whose most probable expert falls below
`min_confidence` falls back to the base model (all weights 0).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from tasks.route.features import LexicalVectoriser, RequestFeatures

ROUTER_CONFIG = "router.json"
ROUTER_WEIGHTS = "router.safetensors"


class DualLinear(nn.Module):
    """A linear map of both views: the standardised hidden state and the sparse TF-IDF bag."""

    def __init__(self, feature_size: int, buckets: int, outputs: int):
        super().__init__()
        self.hidden = nn.Linear(feature_size, outputs)
        self.lexical = nn.EmbeddingBag(buckets, outputs, mode="sum") if buckets else None
        if self.lexical is not None:
            nn.init.zeros_(self.lexical.weight)

    def forward(self, hidden: torch.Tensor, features: RequestFeatures) -> torch.Tensor:
        out = self.hidden(hidden)
        if self.lexical is not None:
            ids, offsets, weights = features.bag_inputs()
            out = out + self.lexical(ids, offsets, per_sample_weights=weights)
        return out


class LinearScorer(nn.Module):
    def __init__(self, feature_size: int, buckets: int, experts: int):
        super().__init__()
        self.linear = DualLinear(feature_size, buckets, experts)

    def forward(self, hidden: torch.Tensor, features: RequestFeatures) -> torch.Tensor:
        return self.linear(hidden, features)


class PrototypeScorer(nn.Module):
    """Logits = cosine similarity of the request's embedding to each expert's prototype / temperature."""

    def __init__(self, feature_size: int, buckets: int, experts: int, hidden_size: int = 128, embedding_size: int = 64,
                 temperature: float = 0.1):
        super().__init__()
        self.first = DualLinear(feature_size, buckets, hidden_size)
        self.rest = nn.Sequential(nn.GELU(), nn.Linear(hidden_size, embedding_size))
        self.register_buffer("prototypes", torch.zeros(experts, embedding_size))
        self.temperature = temperature

    def embed(self, hidden: torch.Tensor, features: RequestFeatures) -> torch.Tensor:
        return F.normalize(self.rest(self.first(hidden, features)), dim=-1)

    def forward(self, hidden: torch.Tensor, features: RequestFeatures) -> torch.Tensor:
        return self.embed(hidden, features) @ self.prototypes.T / self.temperature

    @torch.no_grad()
    def set_prototypes(self, hidden: torch.Tensor, features: RequestFeatures, labels: torch.Tensor) -> None:
        """Each expert's prototype: the normalised mean embedding of its labelled requests."""
        embeddings = self.embed(hidden, features)
        for expert in range(self.prototypes.shape[0]):
            members = embeddings[labels == expert]
            if len(members):
                self.prototypes[expert] = F.normalize(members.mean(0), dim=-1)


SCORERS = {"linear": LinearScorer, "prototype": PrototypeScorer}


class Router(nn.Module):
    def __init__(self, experts: list[str], feature_mean: torch.Tensor, feature_std: torch.Tensor, idf: torch.Tensor,
                 scorer_kind: str, scorer_options: dict | None = None, settings: dict | None = None):
        """`idf`: the lexical vectoriser's weights (empty: no lexical view). `settings`: how features
        are computed and routes chosen (layer, prompt budgets, top_k, min_confidence)."""
        super().__init__()
        self.experts = list(experts)
        self.scorer_kind, self.scorer_options = scorer_kind, dict(scorer_options or {})
        self.settings = dict(settings or {})
        self.register_buffer("feature_mean", feature_mean.float())
        self.register_buffer("feature_std", feature_std.float().clamp_min(1e-6))
        self.register_buffer("idf", idf.float())
        self.scorer = SCORERS[scorer_kind](feature_mean.numel(), idf.numel(), len(self.experts), **self.scorer_options)

    @classmethod
    def for_features(cls, experts: list[str], features: RequestFeatures, vectoriser: LexicalVectoriser | None,
                     scorer_kind: str, scorer_options: dict | None = None, settings: dict | None = None) -> Router:
        idf = vectoriser.idf if vectoriser is not None else torch.zeros(0)
        return cls(experts, features.hidden.mean(0), features.hidden.std(0), idf, scorer_kind, scorer_options, settings)

    @property
    def vectoriser(self) -> LexicalVectoriser | None:
        return LexicalVectoriser(self.idf.numel(), self.idf) if self.idf.numel() else None

    def standardise(self, hidden: torch.Tensor) -> torch.Tensor:
        return (hidden - self.feature_mean) / self.feature_std

    def forward(self, features: RequestFeatures) -> torch.Tensor:
        return self.scorer(self.standardise(features.hidden), features)

    def penalty(self, hidden_l2: float, lexical_l2: float) -> torch.Tensor:
        """L2 on the weights that read each view, set apart: hundreds of dense hidden dimensions
        overfit a thousand notes long before tens of thousands of sparse word buckets do."""
        total = torch.zeros(())
        for module in self.modules():
            if isinstance(module, DualLinear):
                total = total + hidden_l2 * module.hidden.weight.pow(2).sum()
                if module.lexical is not None:
                    total = total + lexical_l2 * module.lexical.weight.pow(2).sum()
        return total

    @torch.no_grad()
    def probabilities(self, features: RequestFeatures) -> torch.Tensor:
        self.eval()
        return self.forward(features).softmax(-1)

    def route(self, features: RequestFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        """Probabilities over the experts, and the mixing weights its settings (top_k, min_confidence) give them."""
        probabilities = self.probabilities(features)
        return probabilities, mixing_weights(probabilities, self.settings.get("top_k", 1), self.settings.get("min_confidence", 0.0))

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(directory / ROUTER_WEIGHTS))
        config = {"experts": self.experts, "scorer_kind": self.scorer_kind, "scorer_options": self.scorer_options,
                  "settings": self.settings}
        (directory / ROUTER_CONFIG).write_text(json.dumps(config, indent=2))
        return directory

    @classmethod
    def load(cls, directory: Path) -> Router:
        config_path = directory / ROUTER_CONFIG
        if not config_path.exists():
            raise FileNotFoundError(f"{config_path}: no router there (the route stage writes one)")
        config = json.loads(config_path.read_text())
        state = load_file(str(directory / ROUTER_WEIGHTS))
        router = cls(config["experts"], state["feature_mean"], state["feature_std"], state["idf"], config["scorer_kind"],
                     config["scorer_options"], config["settings"])
        router.load_state_dict(state)
        return router.eval()


def mixing_weights(probabilities: torch.Tensor, top_k: int, min_confidence: float = 0.0) -> torch.Tensor:
    """Keep each row's k most probable experts, renormalised to sum to 1; rows whose best expert is
    below `min_confidence` get all zeros, which is the base model."""
    k = min(top_k, probabilities.shape[-1])
    top = probabilities.topk(k, dim=-1)
    weights = torch.zeros_like(probabilities).scatter(-1, top.indices, top.values)
    weights = weights / weights.sum(-1, keepdim=True)
    confident = top.values[..., 0] >= min_confidence
    return weights * confident.unsqueeze(-1)
