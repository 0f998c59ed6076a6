"""The model that writes synthetic examples, and the name and version it is recorded under.

`augment.generator`:
- `multitask`: the champion version of `<prefix>-expert-multitask` when one is registered (an adapter trained on
  the notes of every expert, on an earlier run's training split), else the base model alone;
- `base`: the base model alone;
- a `models:/<prefix>-expert-<name>/<version or @alias>` URI of a registered expert;
- a PEFT adapter directory (it holds adapter_config.json), put on the base model;
- anything else: a Hugging Face id or a model directory, with its own tokenizer.
"""

from __future__ import annotations

import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from tasks.base_model import load_base
from tasks.finetune.inference import AdapterEngine, weights_fingerprint
from tasks.params import MULTITASK_EXPERT, Params

log = logging.getLogger(__name__)
MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))$")


@dataclass
class Generator:
    engine: AdapterEngine
    name: str      # what wrote the examples: "base:<base_model>", "models:/<name>/<version>", a path or an HF id
    version: str   # the fingerprint of its weights (base and adapter)


def _registered_adapter(uri: str, scratch: Path) -> tuple[Path, str] | None:
    """(the adapter directory downloaded from the registered version, models:/name/version), or None when the
    model or alias is not registered."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    match = MODEL_URI.match(uri)
    if match is None:
        raise ValueError(f"augment.generator {uri!r}: a model URI is models:/<name>/<version> or models:/<name>@<alias>")
    client = MlflowClient()
    try:
        version = (client.get_model_version(match["name"], match["version"]) if match["version"]
                   else client.get_model_version_by_alias(match["name"], match["alias"]))
    except MlflowException:
        return None
    adapter = Path(client.download_artifacts(version.run_id, "adapter", str(scratch)))
    return adapter, f"models:/{version.name}/{version.version}"


def load_generator(params: Params, root: Path, device: torch.device) -> Generator:
    setting = params.augment.generator
    precision = params.finetune.precision
    if setting not in ("multitask", "base") and not setting.startswith("models:/") and not (root / setting / "adapter_config.json").exists() \
            and not Path(setting, "adapter_config.json").exists():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(setting)
        tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(setting, dtype=torch.float32).to(device)
        return Generator(AdapterEngine(model, tokenizer, precision=precision), setting, weights_fingerprint(model)[:16])

    tokenizer, base = load_base(params.base_model, root, device)
    adapter, name = None, f"base:{params.base_model}"
    with tempfile.TemporaryDirectory() as scratch:
        if setting == "multitask":
            uri = f"models:/{params.tracking.model_prefix}-expert-{MULTITASK_EXPERT}@champion"
            found = _registered_adapter(uri, Path(scratch))
            if found is None:
                log.info("augment: no champion of the multi-task expert is registered yet; the base model writes the examples")
            else:
                adapter, name = found
        elif setting.startswith("models:/"):
            found = _registered_adapter(setting, Path(scratch))
            if found is None:
                raise ValueError(f"augment.generator {setting!r} is not registered in the MLflow registry")
            adapter, name = found
        elif setting != "base":
            adapter = root / setting if (root / setting / "adapter_config.json").exists() else Path(setting)
            name = str(setting)
        model = base
        if adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    return Generator(AdapterEngine(model, tokenizer, precision=precision), name, weights_fingerprint(model)[:16])
