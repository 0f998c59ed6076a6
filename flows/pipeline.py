"""The parent flow: every stage in order, each re-used when DVC says nothing it depends on changed."""

from __future__ import annotations

import importlib
import time
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run
from prefect.states import Completed
from rich.console import Console
from rich.table import Table

from tasks.drift.summary import ATTENTION, read_summary
from tasks.params import load_params
from tasks.run_lock import project_lock
from tasks.stages import StageReport, push_outputs, record_stage, stale_stages

# Every stage, in pipeline order: flows/<stage>.py defines <stage>_flow.
STAGES = ("corpus", "prepare_base", "ingest", "deidentify", "validate", "drift", "augment", "finetune", "register",
          "route", "distil", "evaluate")


def stage_flow(name: str):
    """The flow of stage `name`, imported when asked for: the stage modules import torch, spaCy, Presidio, Great
    Expectations and Evidently (about 20 s for all), which one stage (`dvc repro` runs `medlora stage NAME`) or
    another CLI command need not load."""
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}: one of {', '.join(STAGES)}")
    return getattr(importlib.import_module(f"flows.{name}"), f"{name}_flow")


def run_stage(name: str, root: str | Path = ".") -> StageReport:
    """Run one stage's flow (what `dvc repro` calls through `medlora stage NAME`)."""
    return stage_flow(name)(root=str(root))


@flow(name="medlora-pipeline", persist_result=False)
def pipeline_flow(root: str = ".", force: bool = False) -> list[StageReport]:
    project = Path(root).resolve()
    logger = get_run_logger()
    timeout = load_params(project).pipeline.lock_timeout_s
    with project_lock(project, timeout, flow_run=str(flow_run.get_id()), on_wait=logger.warning):
        # read again under the lock: the run we waited for may have changed params.yaml
        reports = run_stages(project, load_params(project), force, logger)
    return final_state(project, reports, logger)


def final_state(project: Path, reports: list[StageReport], logger):
    """The reports, or, when the drift check blocks promotion, a Completed state named Attention that carries them:
    the run shows it in the UI instead of passing for a plain success."""
    drift = read_summary(project)
    if drift and drift["blocking"]:
        logger.warning("drift blocks promotion: %s", drift["reason"])
        return Completed(name=ATTENTION, message=f"drift blocks promotion: {drift['reason']}", data=reports)
    return reports


def run_stages(project: Path, params, force: bool, logger) -> list[StageReport]:
    stages = [s for s in STAGES if s != "corpus" or params.uses_sample_corpus()]
    reports = []
    for stage in stages:
        # Ask DVC after each stage: an upstream stage that ran may have changed this one's deps.
        if not force and stage not in stale_stages(project, [stage]):
            previous = StageReport.read(project, stage)
            if previous is not None:
                previous.reused, previous.seconds = True, 0.0
                reports.append(previous)
                logger.info("stage %s is up to date: re-using its outputs", stage)
                continue
        started = time.perf_counter()
        report = run_stage(stage, project)
        record_stage(project, stage)
        report.seconds = round(time.perf_counter() - started, 2)
        reports.append(report)
    pushed = push_outputs(project)
    logger.info("pushed %s files to the DVC remote", pushed)
    create_table_artifact(key="pipeline-summary", table=[summary_row(r) for r in reports],
                          description="medlora pipeline: one row per stage")
    return reports


def summary_row(report: StageReport) -> dict[str, str]:
    metrics = ", ".join(f"{k}={v}" for k, v in list(report.metrics.items())[:4])
    return {
        "stage": report.stage,
        "status": "re-used" if report.reused else "ran",
        "seconds": f"{report.seconds:.1f}",
        "records in": "" if report.records_in is None else str(report.records_in),
        "records out": "" if report.records_out is None else str(report.records_out),
        "key metrics": metrics,
    }


def print_summary(reports: list[StageReport], total_seconds: float, console: Console | None = None) -> None:
    table = Table(title=f"medlora pipeline ({total_seconds:.0f} s)")
    for column in ("stage", "status", "seconds", "records in", "records out", "key metrics"):
        table.add_column(column, justify="right" if column in ("seconds", "records in", "records out") else "left")
    for report in reports:
        table.add_row(*summary_row(report).values())
    (console or Console(width=160)).print(table)
