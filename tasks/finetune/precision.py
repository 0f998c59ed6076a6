"""The one precision policy of training and inference: bf16 autocast where the hardware multiplies bf16
natively (GPUs, AVX512-BF16 or AMX CPUs), else fp32. Evaluation, routing and serving read it the same
way, so the numbers evaluated are the numbers served."""

from __future__ import annotations

from contextlib import contextmanager

import torch

PRECISIONS = ("auto", "bf16", "fp32")


def resolve_precision(requested: str, device: torch.device) -> str:
    """'auto' is bf16 where the hardware multiplies bf16 natively, else fp32."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision {requested!r}: expected one of {', '.join(PRECISIONS)}")
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    native_bf16 = torch.backends.cpu.get_cpu_capability() in ("AVX512", "AMX") and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return "bf16" if native_bf16 else "fp32"


def autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


@contextmanager
def frozen_weights_cast(model: torch.nn.Module, precision: str):
    """Under bf16 autocast every matmul casts its fp32 weight to bf16 on every call. For as long as training
    lasts the frozen Linear weights are cast once instead: the same rounding autocast applies, so the same
    numbers, without the copies (on 2 cores, 13% of a SmolLM2 LoRA step of 8 x 300 tokens, 3% on notes of up
    to 512 tokens; in generation, where the tied LM head is cast anyway, no gain). Trainable weights, LoRA
    factors (mixed per request elsewhere) and a weight shared with the input embeddings (which must keep
    the residual stream fp32) are left as they are."""
    if precision != "bf16":
        yield
        return
    embedding = model.get_input_embeddings().weight if hasattr(model, "get_input_embeddings") else None
    originals = []
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if (isinstance(module, torch.nn.Linear) and "lora_" not in name and weight is not embedding
                and not weight.requires_grad and weight.dtype == torch.float32):
            originals.append((weight, weight.data))
            weight.data = weight.data.to(torch.bfloat16)
    try:
        yield
    finally:
        for weight, data in originals:
            weight.data = data
