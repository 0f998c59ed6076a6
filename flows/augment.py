"""Stage: synthetic training examples for experts with few real training notes (tasks/augment/), screened for
structure, residual PHI, support, duplicates, leakage into validation and test, diversity and fluency.

Writes data/augmented/train.parquet (the real training notes and the accepted synthetic examples, every row with
its provenance) and data/augmented/rejected.parquet (each rejected candidate's provenance and reason, never its
text). The counts per expert and reason go to reports/augment.json, an MLflow run (with the accepted examples' provenance as a
table) and the Prefect run (a table artifact). The training set passes the validate stage's notes suite."""

from pathlib import Path

import mlflow
import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from flows.stage_runtime import stage_run
from tasks.augment.filters import REASONS
from tasks.augment.methods import PROVENANCE_COLUMNS
from tasks.augment.stage import AugmentResult, augment
from tasks.base_model import pick_device
from tasks.finetune.expert_data import REAL_ORIGIN
from tasks.layout import AUGMENTED_DIR, GX_DIR, VALIDATED_DIR
from tasks.tracking import configure_tracking
from tasks.validate.gate import read_canaries
from tasks.validate.suite import ValidationGateError, gate_failure_message, run_augmented_suite

SPLITS = ("train", "val", "test")


def read_validated(root: Path) -> dict[str, pd.DataFrame]:
    paths = {s: root / VALIDATED_DIR / f"{s}.parquet" for s in SPLITS}
    if missing := [str(p) for p in paths.values() if not p.exists()]:
        raise FileNotFoundError(f"{', '.join(missing)} not found: run the validate stage first (medlora stage validate)")
    return {s: pd.read_parquet(p) for s, p in paths.items()}


def log_augment_run(params, result: AugmentResult) -> str:
    with mlflow.start_run(run_name="augment", nested=mlflow.active_run() is not None) as run:
        settings = params.augment
        mlflow.set_tags({"medlora.stage": "augment"})
        mlflow.log_params({"generator": result.generator, "generator_version": result.generator_version,
                           "generator_setting": settings.generator, "methods": ",".join(settings.methods),
                           "min_train_notes": settings.min_train_notes, "notes_per_expert": settings.notes_per_expert,
                           "max_synthetic_share": settings.max_synthetic_share, "temperature": settings.temperature,
                           "top_p": settings.top_p, "near_duplicate_similarity": settings.near_duplicate_similarity,
                           "leakage_similarity": settings.leakage_similarity, "leakage_rouge_l": settings.leakage_rouge_l,
                           "diversity_rouge_l": settings.diversity_rouge_l, "fluency_quantile": settings.fluency_quantile})
        mlflow.log_metrics({f"{expert}_{name}": value for expert, counts in result.counts.items() for name, value in counts.items()})
        synthetic = result.train[result.train["origin"] != REAL_ORIGIN]
        mlflow.log_metric("synthetic_examples", len(synthetic))
        if len(synthetic):  # provenance and sizes; the texts stay in data/augmented (DVC), like every note
            mlflow.log_table(synthetic[["note_id", "expert", "specialty", *PROVENANCE_COLUMNS]].assign(
                text_chars=synthetic["text"].str.len(), target_chars=synthetic["target"].str.len()), "synthetic_examples.json")
        if len(result.rejected):
            mlflow.log_table(result.rejected, "rejected_candidates.json")
    return run.info.run_id


@task(persist_result=False)
def augment_training_set(root: Path, params) -> AugmentResult:
    logger = get_run_logger()
    configure_tracking(params, root)  # the generator may be a registered model
    splits = read_validated(root)
    canaries = read_canaries(root / params.validate_.canaries_file) if params.validate_.canaries_file else []
    result = augment(params, root, splits, canaries, pick_device(params.finetune.device), logger.info)
    if (result.train["origin"] != REAL_ORIGIN).any():  # real notes alone passed the validate stage's suite already
        outcome = run_augmented_suite(result.train, params.validate_, sorted(params.note_groups()), root / GX_DIR, canaries)
        if not outcome.success:
            raise ValidationGateError(gate_failure_message(outcome, result.train, str(AUGMENTED_DIR / "train.parquet")))
    out = root / AUGMENTED_DIR
    out.mkdir(parents=True, exist_ok=True)
    result.train.to_parquet(out / "train.parquet", index=False)
    result.rejected.to_parquet(out / "rejected.parquet", index=False)
    run_id = log_augment_run(params, result)
    rows = [{"expert": expert, **counts} for expert, counts in result.counts.items()]
    create_table_artifact(key="augment-counts", table=rows or [{"expert": "(none)", "real": 0}],
                          description=f"Synthetic candidates per expert: accepted, and rejected per reason "
                                      f"({', '.join(REASONS)}); generator {result.generator} (MLflow run {run_id})")
    for expert, counts in result.counts.items():
        logger.info("augment %s: %s real notes (%s near a held-out note, not varied), %s candidates, %s accepted; "
                    "rejected: %s", expert, counts["real"], counts["sources_near_heldout"], counts["candidates"], counts["accepted"],
                    ", ".join(f"{r} {counts[f'rejected_{r}']}" for r in REASONS if counts[f"rejected_{r}"]) or "none")
    return result


@flow(name="augment", persist_result=False)
def augment_flow(root: str = "."):
    with stage_run("augment", root) as (root, params, report):
        result = augment_training_set(root, params)
        synthetic = int((result.train["origin"] != REAL_ORIGIN).sum())
        report.records_in = int((result.train["origin"] == REAL_ORIGIN).sum())
        report.records_out = len(result.train)
        report.metrics = {"augmented_experts": len(result.counts), "synthetic_examples": synthetic,
                          "candidates": sum(c["candidates"] for c in result.counts.values()),
                          "rejected": len(result.rejected), "generator": result.generator, "per_expert": result.counts}
    return report
