"""The one precision policy of training and inference: bf16 autocast where the hardware multiplies bf16
natively (GPUs, AVX512-BF16 or AMX CPUs), else fp32. Evaluation, routing and serving read it the same
way, so the numbers evaluated are the numbers served."""

from __future__ import annotations

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
