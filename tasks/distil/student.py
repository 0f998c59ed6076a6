"""The student: by default a copy of the base model with some of its decoder layers (Minitron's depth pruning: the
kept layers start from the base's weights), optionally with an adapter mix merged in first; or any causal LM that
shares the base model's tokenizer."""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from tasks.finetune.examples import TokenizedExample
from tasks.finetune.train import collate


def kept_layer_count(depth: int, keep: float | list[int]) -> int:
    if isinstance(keep, list):
        return len(keep)
    count = round(depth * keep) if keep < 1 else int(keep)
    if not 1 <= count <= depth:
        raise ValueError(f"distil.keep_layers {keep}: the base model has {depth} decoder layers; keep 1 to {depth}")
    return count


def evenly_spaced(depth: int, count: int) -> list[int]:
    """`count` layer indices spread over `depth`, the first and the last always among them."""
    if count == 1:
        return [0]
    return sorted({round(i * (depth - 1) / (count - 1)) for i in range(count)})


@torch.no_grad()
def block_influence(model, examples: Sequence[TokenizedExample], pad_id: int, batch_size: int = 8) -> list[float]:
    """ShortGPT's block influence of each decoder layer: 1 - cosine(its input, its output), averaged over the
    tokens of `examples`. A layer that barely turns the hidden state is the cheapest to drop."""
    depth = len(model.model.layers)
    totals, tokens = torch.zeros(depth, dtype=torch.float64), 0
    device = next(model.parameters()).device
    for start in range(0, len(examples), batch_size):
        batch = collate(list(examples[start : start + batch_size]), pad_id, device)
        mask = batch["attention_mask"]
        states = model.model(input_ids=batch["input_ids"], attention_mask=mask, output_hidden_states=True).hidden_states
        keep = (mask.bool() if mask is not None else torch.ones_like(batch["input_ids"], dtype=torch.bool))
        for layer in range(depth):
            # hidden_states[-1] is after the final norm; the last layer's own output is not kept apart, so its
            # influence is read through the norm (a scale per channel, which cosine barely notices).
            cosine = torch.nn.functional.cosine_similarity(states[layer][keep].float(), states[layer + 1][keep].float(), dim=-1)
            totals[layer] += (1 - cosine).sum().double()
        tokens += int(keep.sum())
    return (totals / max(tokens, 1)).tolist()


def choose_layers(depth: int, keep: float | list[int], how: str, influence: Sequence[float] | None = None) -> list[int]:
    """The decoder layers the student keeps: given indices as they are; else `count` of them, evenly spaced or
    those of highest block influence (the first and last layer always kept: they read the embeddings and
    write for the LM head)."""
    if isinstance(keep, list):
        if not keep or any(not 0 <= i < depth for i in keep) or len(set(keep)) != len(keep):
            raise ValueError(f"distil.keep_layers {keep}: distinct layer indices from 0 to {depth - 1}")
        return sorted(keep)
    count = kept_layer_count(depth, keep)
    if how == "even" or influence is None or count <= 2:
        return evenly_spaced(depth, count)
    inner = sorted(range(1, depth - 1), key=lambda i: -influence[i])[: count - 2]
    return sorted({0, depth - 1, *inner})


def pruned_copy(model: nn.Module, keep: Sequence[int]) -> nn.Module:
    """A deep copy of a decoder-only causal LM with only the decoder layers `keep` (renumbered for the KV cache)."""
    student = copy.deepcopy(model)
    layers = student.model.layers
    student.model.layers = nn.ModuleList([layers[i] for i in keep])
    for index, layer in enumerate(student.model.layers):
        if hasattr(layer, "self_attn"):
            layer.self_attn.layer_idx = index
    config = student.config
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in keep]
    config.num_hidden_layers = len(keep)
    return student


def with_adapter_merged(model: nn.Module, adapter_state: dict[str, torch.Tensor], adapter_config: dict) -> nn.Module:
    """A copy of `model` with a LoRA adapter (a PEFT state and config, as tasks/route/mixing.py merges them) folded
    into its weights."""
    from peft import PeftModel

    from tasks.route.mixing import save_adapter

    with tempfile.TemporaryDirectory() as scratch:
        save_adapter(adapter_state, adapter_config, Path(scratch) / "mix")
        merged = PeftModel.from_pretrained(copy.deepcopy(model), Path(scratch) / "mix").merge_and_unload()
    return merged


def parameter_count(model: nn.Module) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
