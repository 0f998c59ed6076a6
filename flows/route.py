"""Stage: train the router among the experts, score it (routing and downstream), set the served bundle's
safety thresholds on validation, compose experts for specialties that have none, and register the bundle
(router, every expert, base model, code) and composed experts in MLflow."""

import json
import shutil
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from flows.stage_runtime import stage_run
from tasks.base_model import resolve_base_model
from tasks.finetune.inference import InferenceCache
from tasks.layout import ADAPTERS_DIR, VALIDATED_DIR
from tasks.register.bundle_registry import register_bundle
from tasks.register.registry import register_composed_expert
from tasks.route.evaluate import plot_confusion, plot_downstream, plot_utilisation
from tasks.route.stage import (COMPOSED_DIR, EVALUATION_FILE, ROUTER_DIR, ROUTER_MODEL_DIR, compose_experts, downstream_table,
                               prepare, read_notes, routing_evaluation, safety_thresholds,
                               train_router)
from tasks.stages import REPORTS_DIR
from tasks.tracking import configure_tracking
from tasks.versioning import dvc_data_version, git_commit


@task(persist_result=False)
def train_and_evaluate(root: Path, params) -> dict:
    logger = get_run_logger()
    if (root / ROUTER_DIR).exists():
        shutil.rmtree(root / ROUTER_DIR)
    setup = prepare(params, root, root / ADAPTERS_DIR, read_notes(root, VALIDATED_DIR), cache=InferenceCache.for_project(root))
    router, log, train_loss = train_router(setup)
    router.save(root / ROUTER_MODEL_DIR)
    evaluation = {"strategy": params.route.strategy, "experts": setup.experts, "layer_selection": setup.layer_selection,
                  "training": {"loss_per_epoch": log.loss_per_epoch, "val_accuracy_per_epoch": log.val_accuracy_per_epoch,
                               "best_epoch": log.best_epoch, **log.extra,
                               **({"scored_forward_rows": train_loss.forward_rows} if train_loss else {})},
                  "routing": routing_evaluation(router, setup)}
    for kind, report in evaluation["routing"].items():
        logger.info("routing accuracy on held-out %s: %s (%s requests)", kind, report["accuracy"], report["requests"])
    evaluation["downstream"] = downstream_table(router, setup, limit=params.route.evaluate_notes)
    for row in evaluation["downstream"]:
        logger.info("downstream %s: target loss %s, ROUGE-L %s", row["system"], row["target_loss"], row.get("rouge_l"))
    evaluation["safety"] = safety_thresholds(router, setup)
    evaluation["base_fingerprint"] = setup.mixture.base_fingerprint
    evaluation["composed"] = compose_experts(setup, root / COMPOSED_DIR)
    (root / ROUTER_DIR / EVALUATION_FILE).write_text(json.dumps(evaluation, indent=2))
    return evaluation


def write_plots(evaluation: dict, plot_dir: Path) -> list[Path]:
    plot_dir.mkdir(parents=True, exist_ok=True)
    plots = []
    for kind, report in evaluation["routing"].items():
        plots.append(plot_confusion(report["confusion"], evaluation["experts"], f"routing of held-out {kind}",
                                    plot_dir / f"confusion_{kind}.png"))
        plots.append(plot_utilisation(report["utilisation"], f"expert use ({kind})", plot_dir / f"utilisation_{kind}.png"))
    if evaluation["downstream"]:
        plots.append(plot_downstream(evaluation["downstream"], plot_dir / "downstream.png"))
    return plots


@task(persist_result=False)
def register(root: Path, params, evaluation: dict, plots: list[Path]) -> list[dict]:
    configure_tracking(params, root)
    location = str(resolve_base_model(params.base_model, root))
    versions = {"git_commit": git_commit(root), "dvc_data_version": dvc_data_version(root, "validate", "data/validated")}
    registered_path = root / REPORTS_DIR / "registered_models.json"
    registered = json.loads(registered_path.read_text()) if registered_path.exists() else []
    expert_versions = {r["expert"]: f"{r['model']}/{r['version']}" for r in registered if r["expert"] in evaluation["experts"]}
    served = [*evaluation["experts"], *(e for e in params.trained_experts() if e not in evaluation["experts"])]
    adapters = {e: root / ADAPTERS_DIR / e for e in served if (root / ADAPTERS_DIR / e / "adapter_config.json").exists()}
    results = [{"expert": "(bundle)", **register_bundle(root, root / ROUTER_MODEL_DIR, adapters, params, location, evaluation,
                                                        plots, versions, expert_versions)}]
    for composition in evaluation["composed"]:
        if "skipped" not in composition:
            results.append(register_composed_expert(root / COMPOSED_DIR / composition["expert"], composition, params,
                                                    location, versions))
    return results


@flow(name="route", persist_result=False)
def route_flow(root: str = "."):
    with stage_run("route", root) as (root, params, report):
        evaluation = train_and_evaluate(root, params)
        plots = write_plots(evaluation, root / ROUTER_DIR / "plots")
        registered = register(root, params, evaluation, plots)
        create_table_artifact(key="router-downstream", table=evaluation["downstream"] or [{"system": "(no labelled held-out notes)"}],
                              description="Held-out target loss and ROUGE-L per routing scheme")
        create_table_artifact(key="registered-router", table=registered, description="Router and composed experts registered in MLflow")
        notes = evaluation["routing"].get("notes", {})
        report.records_in = notes.get("requests", 0)
        report.records_out = len(registered)
        by_system = {row["system"]: row["target_loss"] for row in evaluation["downstream"]}
        report.metrics = {"strategy": params.route.strategy, "routing_accuracy": notes.get("accuracy", "n/a"),
                          "utilisation_entropy_bits": notes.get("utilisation", {}).get("entropy_bits", "n/a"),
                          **{f"loss_{k.split()[0]}": v for k, v in by_system.items()},
                          "composed_experts": sum("skipped" not in c for c in evaluation["composed"])}
    return report
