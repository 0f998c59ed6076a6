"""Stage: one LoRA adapter per expert: each specialty group, optionally all groups together, and each task.

Experts train one after another in this process, or, with `finetune.scale_out.engine: dask` (or `ray`),
as Prefect tasks fanned out on a cluster: the multi-task expert first when specialty experts start from
it, then the rest at once. Each training is seeded by itself, so an adapter is the same wherever it is
trained, given the same torch threads.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from contextlib import nullcontext
from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run

from flows.stage_runtime import stage_run
from tasks.base_model import load_base, pick_device
from tasks.finetune.examples import Request, answer_of
from tasks.evaluate.metrics import rouge_l
from tasks.finetune.expert_data import expert_records, provenance_summary, real_only, synthetic_rows
from tasks.finetune.inference import answer_probabilities, best_answer, generate
from tasks.finetune.train import train_expert_adapter, write_report
from tasks.layout import ADAPTERS_DIR, AUGMENTED_DIR, VALIDATED_DIR
from tasks.params import MULTITASK_EXPERT, Params, ScaleOutParams, load_params
from tasks.run_lock import project_lock
from tasks.stages import StageReport, record_stage


@task(persist_result=False)
def train_expert(root: Path, params, expert: str, splits: dict[str, pd.DataFrame], threads: int | None = None) -> dict:
    """`threads`: None trains with finetune.threads and a progress bar (in this process); a number is a
    scale-out worker's share of its machine (0: resolved on the worker), and progress goes to the log.
    An expert with synthetic training examples (the augment stage) is trained on its real notes alone too, when
    augment.keep is auto, and keeps whichever adapter has the lower validation loss (real notes only)."""
    started = time.perf_counter()
    settings = params.finetune.for_expert(expert)
    fanned_out = threads is not None
    if fanned_out:
        settings = settings.model_copy(update={"threads": threads or threads_on_this_worker()})
        get_run_logger().info("expert %s: training on %s with %s torch threads", expert, worker_name(), settings.threads)
    output_dir = root / ADAPTERS_DIR / expert
    synthetic = synthetic_rows(splits["train"], params, expert)
    keep = params.augment.keep if len(synthetic) else "none"
    if keep in ("auto", "never"):
        real_only_dir = output_dir if keep == "never" else root / settings.checkpoint_dir / "real-only" / expert
        trained = _train(root, params, expert, real_only(splits), settings, fanned_out, real_only_dir)
        if keep == "auto":
            trained = choose_augmentation(trained, _train(root, params, expert, splits, settings, fanned_out, output_dir),
                                          real_only_dir, output_dir, settings)
    else:
        trained = _train(root, params, expert, splits, settings, fanned_out, output_dir)
    report, model, tokenizer, val = trained
    report.data_provenance = provenance_summary(synthetic, keep) | report.data_provenance
    if val and val[0][0].is_question:
        report.val_metrics["val_accuracy"] = validation_accuracy(model, tokenizer, val, settings)
    write_report(output_dir, report)
    return {"expert": expert, "val_loss": report.val_loss, "tokens_per_second": report.tokens_per_second,
            "train_examples": report.train_examples, "steps": report.steps, "seconds": report.seconds,
            "threads": report.threads, "worker": worker_name(), "task_seconds": round(time.perf_counter() - started, 2),
            **report.val_metrics}


def _train(root: Path, params, expert: str, splits: dict[str, pd.DataFrame], settings, fanned_out: bool, output_dir: Path):
    """(report, model, tokenizer, validation pairs) of one training of the expert's adapter into output_dir."""
    records = expert_records(params, expert, splits, root)
    device = pick_device(settings.device)
    # A fresh base per training: get_peft_model injects LoRA layers in place (reloading takes < 1 s).
    tokenizer, base = load_base(params.base_model, root, device)
    specialise = params.finetune.specialise_from_multitask and expert in params.experts
    report, model = train_expert_adapter(expert, records["train"], records["val"], tokenizer, base, settings, output_dir,
                                         params.seed, device, checkpoint_dir=root / settings.checkpoint_dir,
                                         progress=not fanned_out,
                                         init_adapter=root / ADAPTERS_DIR / MULTITASK_EXPERT if specialise else None)
    return report, model, tokenizer, records["val"]


def choose_augmentation(real_only, augmented, real_only_dir: Path, output_dir: Path, settings):
    """The trained adapter with the lower validation loss, in output_dir; both figures, and the ROUGE-L of each
    on the validation notes, are in its report (val_*_real_only, val_*_augmented, augmentation_kept)."""
    figures = {}
    for name, (report, model, tokenizer, val) in (("real_only", real_only), ("augmented", augmented)):
        figures[f"val_loss_{name}"] = report.val_loss
        figures[f"val_rouge_l_{name}"] = validation_rouge_l(model, tokenizer, val, settings)
    decided = augmented[0].val_loss is not None and real_only[0].val_loss is not None
    kept = decided and augmented[0].val_loss < real_only[0].val_loss  # no validation notes: the real notes alone
    if not kept:
        shutil.rmtree(output_dir, ignore_errors=True)
        shutil.copytree(real_only_dir, output_dir)
    shutil.rmtree(real_only_dir, ignore_errors=True)
    chosen = augmented if kept else real_only
    chosen[0].val_metrics |= {name: value for name, value in figures.items() if value is not None}
    chosen[0].val_metrics["augmentation_kept"] = int(kept)
    chosen[0].data_provenance["augmentation"] = ("kept: won on validation" if kept else "dropped: lost on validation"
                                                  if decided else "dropped: no validation notes to decide on")
    return chosen


def validation_rouge_l(model, tokenizer, val: list[tuple[Request, str]], settings) -> float | None:
    if not val:
        return None
    outputs = generate(model, tokenizer, [r for r, _ in val], settings.max_source_tokens, settings.max_target_tokens,
                       settings.generation_batch_size, precision=settings.precision)
    return round(sum(rouge_l(o, t) for o, (_, t) in zip(outputs, val)) / len(val), 4)


def worker_name() -> str:
    """host:pid of the process that trains, so a report shows where each expert ran."""
    return f"{socket.gethostname()}:{os.getpid()}"


def threads_on_this_worker() -> int:
    """A Dask worker's machine shared by the trainings it runs at once (Dask's nanny sets
    OMP_NUM_THREADS=1 in its workers, which would leave torch one thread); elsewhere torch's default."""
    try:
        from distributed import get_worker

        return max(1, (os.cpu_count() or 1) // get_worker().state.nthreads)
    except (ImportError, ValueError):
        return 0


def validation_accuracy(model, tokenizer, val: list[tuple[Request, str]], settings) -> float:
    probabilities = answer_probabilities(model, tokenizer, [r for r, _ in val], settings.max_source_tokens,
                                         settings.generation_batch_size, precision=settings.precision)
    correct = sum(best_answer(p) == answer_of(target) for p, (_, target) in zip(probabilities, val))
    return round(correct / len(val), 4)


def experts_with_data(root: Path, params: Params) -> list[str]:
    """The experts to train; a task expert whose corpus is absent is skipped with a warning."""
    experts = []
    for expert in params.trained_experts():
        task_data = params.finetune.task_experts.get(expert)
        if task_data and not (root / task_data.path).exists():
            get_run_logger().warning("task expert %s skipped: %s not found", expert, task_data.path)
            continue
        experts.append(expert)
    return experts


def read_splits(root: Path) -> dict[str, pd.DataFrame]:
    """The training set the augment stage wrote (real notes and synthetic examples) and the validation split."""
    paths = {"train": root / AUGMENTED_DIR / "train.parquet", "val": root / VALIDATED_DIR / "val.parquet"}
    if missing := [str(p) for p in paths.values() if not p.exists()]:
        raise FileNotFoundError(f"{', '.join(missing)} not found: run the stages up to augment first "
                                "(`medlora run`, or `dvc repro augment`)")
    return {s: pd.read_parquet(p) for s, p in paths.items()}


def scale_out_task_runner(scale_out: ScaleOutParams):
    """The Prefect task runner for engine dask or ray, and the torch threads each training takes."""
    local = not (scale_out.address or scale_out.cluster_class)
    cores = os.cpu_count() or 1
    threads = scale_out.threads_per_worker or (max(1, cores // scale_out.workers) if local else 0)
    if local and scale_out.workers * max(threads, 1) > cores:
        get_run_logger().warning("finetune.scale_out: %s workers x %s threads on %s cores: the trainings slow each other down",
                                 scale_out.workers, threads, cores)
    if scale_out.engine == "ray":
        try:
            from prefect_ray import RayTaskRunner
        except ImportError:
            raise ImportError("finetune.scale_out.engine is ray, but prefect-ray is not installed: pip install prefect-ray") from None
        init_kwargs = ({"num_cpus": scale_out.workers} if local else {}) | scale_out.cluster_kwargs
        return RayTaskRunner(address=scale_out.address or None, init_kwargs=init_kwargs), threads
    from prefect_dask import DaskTaskRunner

    if scale_out.address:
        return DaskTaskRunner(address=scale_out.address), threads
    if scale_out.cluster_class:
        return DaskTaskRunner(cluster_class=scale_out.cluster_class, cluster_kwargs=scale_out.cluster_kwargs), threads
    # One training at a time per worker process. Workers report task runs to this flow's Prefect API
    # (without it each would start an ephemeral server of its own); Dask's own INFO lines stay out of the log.
    from prefect.client.orchestration import get_client

    cluster_kwargs = {"n_workers": scale_out.workers, "threads_per_worker": 1, "processes": True,
                      "silence_logs": logging.WARNING, "env": {"PREFECT_API_URL": str(get_client(sync_client=True).api_url)},
                      **scale_out.cluster_kwargs}
    return DaskTaskRunner(cluster_kwargs=cluster_kwargs), threads


def torch_friendly_dask_workers():
    """Dask's nanny starts local workers with MALLOC_TRIM_THRESHOLD_=65536 (to hand memory back sooner); with
    it glibc maps and unmaps every large tensor, and two SmolLM2 training steps took 20-24 s instead of 9-13 s
    on one thread here. None unsets it (distributed's own convention for pre-spawn-environ)."""
    import dask

    return dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None})


@flow(name="train-experts", persist_result=False)
def train_experts_fanned_out(root: str, experts: list[str], threads: int) -> list[dict]:
    """Every expert as a task on the flow's task runner; specialty experts wait for the multi-task one
    when they start from it, everything else runs at once."""
    root = Path(root)
    params = load_params(root)
    splits = read_splits(root)
    futures = {}
    if MULTITASK_EXPERT in experts:
        futures[MULTITASK_EXPERT] = train_expert.submit(root, params, MULTITASK_EXPERT, splits, threads)
    first = [futures[MULTITASK_EXPERT]] if params.finetune.specialise_from_multitask and futures else []
    for expert in experts:
        if expert != MULTITASK_EXPERT:
            futures[expert] = train_expert.submit(root, params, expert, splits, threads,
                                                  wait_for=first if expert in params.experts else [])
    return [futures[expert].result() for expert in experts]


@flow(name="finetune", persist_result=False)
def finetune_flow(root: str = "."):
    with stage_run("finetune", root) as (root, params, report):
        logger = get_run_logger()
        experts = experts_with_data(root, params)
        scale_out = params.finetune.scale_out
        if scale_out.engine == "none":
            splits = read_splits(root)
            results = [train_expert(root, params, expert, splits) for expert in experts]
        else:
            task_runner, threads = scale_out_task_runner(scale_out)
            with torch_friendly_dask_workers() if scale_out.engine == "dask" else nullcontext():
                results = train_experts_fanned_out.with_options(task_runner=task_runner)(str(root), experts, threads)
        for r in results:
            logger.info("expert %s: %s steps, %s s (training %s s) on %s with %s threads, val loss %s, %s tokens/s", r["expert"],
                        r["steps"], r["task_seconds"], r["seconds"], r["worker"], r["threads"], r["val_loss"], r["tokens_per_second"])
        report.records_in = sum(r["train_examples"] for r in results)
        report.records_out = len(results)
        losses = [r["val_loss"] for r in results if r["val_loss"] is not None]
        report.metrics = {"experts": len(results), "mean_val_loss": round(sum(losses) / len(losses), 4) if losses else "n/a",
                          "tokens_per_second": round(sum(r["tokens_per_second"] for r in results) / len(results), 1),
                          "engine": scale_out.engine, "workers": len({r["worker"] for r in results}),
                          "expert_seconds": {r["expert"]: r["task_seconds"] for r in results}}
    return report


@flow(name="retrain-expert", persist_result=False)
def retrain_expert_flow(root: str = ".", expert: str = "") -> dict:
    """Train one expert's adapter again on the current validated data (models/adapters/<expert>), in
    this process; the other adapters and reports/finetune.json are left as they are."""
    root = Path(root).resolve()
    params = load_params(root)
    logger = get_run_logger()
    known = params.trained_experts()
    if expert not in known:
        said = f"unknown expert {expert!r}" if expert else "no expert named"
        raise ValueError(f"{said}: the experts {root / 'params.yaml'} trains are {', '.join(known)}")
    task_data = params.finetune.task_experts.get(expert)
    if task_data and not (root / task_data.path).exists():
        raise FileNotFoundError(f"task expert {expert!r} reads {task_data.path}, which is not found under {root}; "
                                f"fix finetune.task_experts.{expert}.path in params.yaml")
    specialist = params.finetune.specialise_from_multitask and expert in params.experts
    if specialist and not (root / ADAPTERS_DIR / MULTITASK_EXPERT / "adapter_model.safetensors").exists():
        raise FileNotFoundError(f"expert {expert!r} starts from the {MULTITASK_EXPERT} adapter (finetune.specialise_from_multitask), "
                                f"which is not in {root / ADAPTERS_DIR}: retrain {MULTITASK_EXPERT!r} first")
    with project_lock(root, params.pipeline.lock_timeout_s, flow_run=str(flow_run.get_id()), on_wait=logger.warning):
        result = train_expert(root, params, expert, read_splits(root))
        if StageReport.read(root, "finetune") is not None:  # DVC knows the stage: record the new adapter in dvc.lock,
            record_stage(root, "finetune")                  # so the next run registers, routes and evaluates it
    logger.info("expert %s retrained: %s steps in %s s, val loss %s; `medlora run` (or the nightly run) registers and "
                "evaluates it", expert, result["steps"], result["seconds"], result["val_loss"])
    if expert == MULTITASK_EXPERT and params.finetune.specialise_from_multitask:
        logger.warning("the specialty experts (%s) start from the %s adapter: retrain them too, or run the finetune stage",
                       ", ".join(params.experts), MULTITASK_EXPERT)
    return result
