"""Exact mixing of LoRA experts.

Expert e adds s_e B_e A_e x to a layer's output (s_e = alpha / r). A mixture with weights w adds
sum_e w_e s_e B_e A_e x. Stacking the experts' factors, A = [w_1 s_1 A_1; ...; w_E s_E A_E] and
B = [B_1 ... B_E], gives B A = sum_e w_e s_e B_e A_e exactly: PEFT's `cat` combination. Averaging
the A's and the B's separately (PEFT's `linear`) gives (sum_i w_i B_i)(sum_j w_j A_j) instead, whose
cross terms B_i A_j belong to no expert.

`ExpertMixture` installs the stacked factors in the base model once and takes the weights per
request, so each row of a batch can mix its own combination (training a router, scoring rewards,
serving). `CombinationCache` merges a fixed combination into an ordinary PEFT adapter, rank = sum of
ranks, that serving engines (vLLM, LoRAX) load as is; merged combinations are kept in an LRU cache,
with weights rounded to a grid so that nearby routes share one.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from tasks.finetune.inference import Plan, file_fingerprint, mixture_identity, weights_fingerprint

PEFT_PREFIX = "base_model.model."
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


@dataclass
class ExpertFactors:
    """One expert's LoRA factors per module path of the base model (A: r x in, B: out x r)."""

    name: str
    scaling: float
    config: dict
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]
    fingerprint: str = ""  # of its weights file: the inference cache's name for it


def load_expert_factors(adapter_dir: Path, name: str) -> ExpertFactors:
    config_path, weights_path = adapter_dir / ADAPTER_CONFIG, adapter_dir / ADAPTER_WEIGHTS
    for path in (config_path, weights_path):
        if not path.exists():
            raise FileNotFoundError(f"{path}: expert {name!r} has no PEFT adapter there")
    config = json.loads(config_path.read_text())
    if config.get("peft_type") != "LORA" or config.get("rank_pattern") or config.get("alpha_pattern"):
        raise ValueError(f"{config_path}: only plain LoRA adapters (one rank and alpha) can be mixed")
    rank = config["r"]
    scaling = config["lora_alpha"] / (math.sqrt(rank) if config.get("use_rslora") else rank)
    state = load_file(str(weights_path))
    factors = {}
    for key in state:
        if key.endswith(".lora_A.weight"):
            module = key[len(PEFT_PREFIX) : -len(".lora_A.weight")]
            factors[module] = (state[key].float(), state[key.replace(".lora_A.", ".lora_B.")].float())
    return ExpertFactors(name, scaling, config, factors, file_fingerprint(weights_path))


class _RowWeights:
    """The mixing weights of the current batch, shared by every mixed layer: (batch, experts) or None."""

    value: torch.Tensor | None = None


class MixedLoRALinear(nn.Module):
    """A frozen linear layer plus the stacked LoRA factors of every expert, weighted per batch row.

    Weights that need no gradient (inference) are prepared once per batch, not at every generation step:
    the columns of experts no row uses are dropped (exact: they are multiplied by 0), and the factors are
    cast once to the dtype autocast would cast them to at every call."""

    def __init__(self, base: nn.Linear, lora_a: torch.Tensor, lora_b: torch.Tensor,
                 column_expert: torch.Tensor, column_scaling: torch.Tensor, weights: _RowWeights):
        super().__init__()
        self.base = base
        self.register_buffer("lora_a", lora_a)
        self.register_buffer("lora_b", lora_b)
        self.register_buffer("column_expert", column_expert)
        self.register_buffer("column_scaling", column_scaling)
        self.weights = weights
        self._prepared: tuple | None = None  # (weights it was prepared for, dtype, column weights, A, B)

    def _factors(self, weights: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        column_weights = weights[:, self.column_expert] * self.column_scaling  # (batch, total rank)
        if weights.requires_grad:
            return column_weights, self.lora_a, self.lora_b
        cached = self._prepared
        if cached is not None and cached[0] is weights and cached[1] == dtype:
            return cached[2:]
        used = column_weights.abs().sum(0) > 0
        prepared = (column_weights[:, used].to(dtype), self.lora_a[used].to(dtype), self.lora_b[:, used].to(dtype))
        self._prepared = (weights, dtype, *prepared)
        return prepared

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        weights = self.weights.value
        if weights is None:
            self._prepared = None
            return out
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        column_weights, lora_a, lora_b = self._factors(weights, dtype)
        hidden = F.linear(x, lora_a)
        hidden = hidden * column_weights.unsqueeze(1).to(hidden.dtype)  # x: (batch, tokens, features)
        return out + F.linear(hidden, lora_b).to(out.dtype)


class ExpertMixture:
    """The base model with every expert installed, mixed with the weights given to `mixed`."""

    def __init__(self, model: nn.Module, experts: list[ExpertFactors]):
        if not experts:
            raise ValueError("a mixture needs at least one expert")
        self.model = model
        self.experts = experts
        self.names = [e.name for e in experts]
        self._weights = _RowWeights()
        self.base_fingerprint = weights_fingerprint(model)  # before the experts are installed
        device = next(model.parameters()).device
        modules = sorted({path for e in experts for path in e.factors})
        for path in modules:
            parent_path, _, attribute = path.rpartition(".")
            parent = model.get_submodule(parent_path)
            base = getattr(parent, attribute)
            a_parts, b_parts, column_expert, column_scaling = [], [], [], []
            for index, expert in enumerate(experts):
                if path in expert.factors:
                    lora_a, lora_b = expert.factors[path]
                    a_parts.append(lora_a)
                    b_parts.append(lora_b)
                    column_expert += [index] * lora_a.shape[0]
                    column_scaling += [expert.scaling] * lora_a.shape[0]
            setattr(parent, attribute, MixedLoRALinear(
                base, torch.cat(a_parts).to(device), torch.cat(b_parts, dim=1).to(device),
                torch.tensor(column_expert, device=device), torch.tensor(column_scaling, device=device), self._weights))

    @classmethod
    def from_adapter_dirs(cls, model: nn.Module, adapter_dirs: dict[str, Path]) -> ExpertMixture:
        return cls(model, [load_expert_factors(path, name) for name, path in adapter_dirs.items()])

    def weight_matrix(self, weights: torch.Tensor | list, rows: int) -> torch.Tensor:
        matrix = torch.as_tensor(weights, dtype=torch.float, device=next(self.model.parameters()).device)
        if matrix.dim() == 1:
            matrix = matrix.expand(rows, -1)
        if matrix.shape != (rows, len(self.experts)):
            raise ValueError(f"mixing weights of shape {tuple(matrix.shape)}: expected ({rows}, {len(self.experts)}) "
                             f"for experts {self.names}")
        return matrix

    def identities(self, weights: torch.Tensor) -> list[str]:
        """Per row of (rows, experts) weights: the weights that answer it, as the inference cache names them
        (the same for an expert alone as for that expert's own PEFT adapter)."""
        return [mixture_identity(self.base_fingerprint, [(e.fingerprint, float(w)) for e, w in zip(self.experts, row)])
                for row in torch.as_tensor(weights, dtype=torch.float).tolist()]

    def engine(self, tokenizer, weights: torch.Tensor, precision: str = "auto") -> MixtureEngine:
        return MixtureEngine(self, tokenizer, torch.as_tensor(weights, dtype=torch.float), precision)

    @contextmanager
    def mixed(self, weights: torch.Tensor, rows: int):
        """Inside, the model adds sum_e weights[row, e] * expert e's update to each row of a batch of `rows`.
        Weights may require grad (a router trained through the mixture); all zeros is the base model."""
        self._weights.value = self.weight_matrix(weights, rows)
        try:
            yield self.model
        finally:
            self._weights.value = None


@dataclass
class MixtureEngine:
    """The mixture as an inference engine: request i answered by the mix weights[i]."""

    mixture: ExpertMixture
    tokenizer: object
    weights: torch.Tensor
    precision: str = "auto"

    @property
    def model(self) -> nn.Module:
        return self.mixture.model

    def plan(self, requests) -> Plan:
        if len(requests) != len(self.weights):
            raise ValueError(f"{len(requests)} requests for {len(self.weights)} rows of mixing weights")
        return Plan(lambda rows: self.mixture.mixed(self.weights[rows], len(rows)), self.mixture.identities(self.weights))


def merged_adapter_state(experts: list[ExpertFactors], weights: list[float]) -> tuple[dict[str, torch.Tensor], dict]:
    """The `cat` combination as a PEFT adapter: state dict and config (r = sum of ranks, alpha = r so scaling is 1)."""
    state, rank = {}, None
    modules = sorted({path for e in experts for path in e.factors})
    for path in modules:
        parts = [(w * e.scaling * e.factors[path][0], e.factors[path][1])
                 for e, w in zip(experts, weights) if path in e.factors]
        lora_a = torch.cat([a for a, _ in parts])
        lora_b = torch.cat([b for _, b in parts], dim=1)
        state[f"{PEFT_PREFIX}{path}.lora_A.weight"] = lora_a.contiguous()
        state[f"{PEFT_PREFIX}{path}.lora_B.weight"] = lora_b.contiguous()
        rank = max(rank or 0, lora_a.shape[0])
    # Modules some experts lack get fewer columns; pad them to the common rank with zeros.
    for key, tensor in list(state.items()):
        missing = rank - (tensor.shape[0] if ".lora_A." in key else tensor.shape[1])
        if missing:
            state[key] = F.pad(tensor, (0, 0, 0, missing) if ".lora_A." in key else (0, missing))
    config = dict(experts[0].config)
    target_modules = sorted({m for e in experts for m in e.config.get("target_modules") or []})
    config.update(r=rank, lora_alpha=rank, use_rslora=False, target_modules=target_modules, inference_mode=True)
    return state, config


def save_adapter(state: dict[str, torch.Tensor], config: dict, output_dir: Path) -> Path:
    output_dir.mkdir(parents=True, exist_ok=True)
    save_file(state, str(output_dir / ADAPTER_WEIGHTS))
    (output_dir / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))
    return output_dir


class CombinationCache:
    """Merged `cat` adapters for combinations of experts, least recently used dropped first.

    Weights are rounded to `grid` first, so routes that differ by less share one merged adapter."""

    def __init__(self, experts: list[ExpertFactors], size: int = 32, grid: float = 0.05):
        self.experts, self.size, self.grid = experts, size, grid
        self._merged: OrderedDict[tuple[float, ...], tuple[dict, dict]] = OrderedDict()
        self.hits = self.misses = 0

    def key(self, weights: list[float]) -> tuple[float, ...]:
        return tuple(round(round(w / self.grid) * self.grid, 6) for w in weights)

    def merged(self, weights: list[float]) -> tuple[dict[str, torch.Tensor], dict]:
        key = self.key(weights)
        if key in self._merged:
            self.hits += 1
            self._merged.move_to_end(key)
            return self._merged[key]
        self.misses += 1
        used = [(e, w) for e, w in zip(self.experts, key) if w != 0]
        if not used:
            raise ValueError("every weight rounds to 0: that combination is the base model, not an adapter")
        self._merged[key] = merged_adapter_state([e for e, _ in used], [w for _, w in used])
        if len(self._merged) > self.size:
            self._merged.popitem(last=False)
        return self._merged[key]
