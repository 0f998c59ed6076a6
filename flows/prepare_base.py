"""Stage: make the base model loadable offline (convert SmolLM2's GGUF once, or build the tiny model)."""

import json

from prefect import flow, task

from flows.stage_runtime import stage_run
from tasks.base_model import PREPARED_DIR, prepare_base_model


@task(persist_result=False)
def prepare(base_model: str, root) -> dict:
    return prepare_base_model(base_model, root)


@flow(name="prepare-base", persist_result=False)
def prepare_base_flow(root: str = "."):
    with stage_run("prepare_base", root) as (root, params, report):
        description = prepare(params.base_model, root)
        (root / PREPARED_DIR).mkdir(parents=True, exist_ok=True)
        (root / PREPARED_DIR / "base_model.json").write_text(json.dumps(description, indent=2))
        report.metrics = {k: v for k, v in description.items() if k != "prepared"}
    return report
