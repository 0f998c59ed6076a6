"""Stage: log every adapter to MLflow and register it, tagged with the git commit and data version."""

import json

from prefect import flow, task
from prefect.artifacts import create_table_artifact

from flows.stage_runtime import stage_run
from tasks.base_model import resolve_base_model
from tasks.finetune.train import TRAINING_REPORT
from tasks.layout import ADAPTERS_DIR
from tasks.register.registry import register_expert
from tasks.tracking import configure_tracking
from tasks.stages import REPORTS_DIR
from tasks.versioning import dvc_data_version, git_commit


@task(persist_result=False)
def register(root, params, versions: dict) -> list[dict]:
    configure_tracking(params, root)
    location = resolve_base_model(params.base_model, root)
    trained = [expert for expert in params.trained_experts() if (root / ADAPTERS_DIR / expert / TRAINING_REPORT).exists()]
    return [register_expert(root / ADAPTERS_DIR / expert, params, str(location), versions) for expert in trained]


@flow(name="register", persist_result=False)
def register_flow(root: str = "."):
    with stage_run("register", root) as (root, params, report):
        versions = {"git_commit": git_commit(root), "dvc_data_version": dvc_data_version(root, "validate", "data/validated")}
        registered = register(root, params, versions)
        (root / REPORTS_DIR / "registered_models.json").write_text(json.dumps(registered, indent=2))
        create_table_artifact(key="registered-experts", table=registered, description="Expert adapters registered in MLflow")
        report.records_in = report.records_out = len(registered)
        report.metrics = {"models": len(registered), "data_version": versions["dvc_data_version"][:12]}
    return report
