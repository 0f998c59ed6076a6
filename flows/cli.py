"""The `medlora` command line."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="medlora", description="Clinical notes to specialised LoRA experts.")
    parser.add_argument("--root", default=".", help="project directory holding params.yaml and dvc.yaml")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the whole pipeline, re-using up-to-date stages")
    run.add_argument("--force", action="store_true", help="run every stage even when DVC says it is up to date")
    run.add_argument("--preset", metavar="NAME|FILE",
                     help="merge presets/NAME.yaml (or this YAML file) into params.yaml before the run, e.g. --preset tiny")
    run.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                     help="set one param in params.yaml before the run (dotted key, YAML value), e.g. "
                          "--set finetune.max_steps=50; repeatable, applied after --preset")
    run.add_argument("--dry-run", action="store_true",
                     help="with --preset/--set: validate and show what would change in params.yaml, then stop")
    stage = commands.add_parser("stage", help="run one stage (what dvc repro calls)")
    from flows.pipeline import STAGES

    stage.add_argument("name", choices=STAGES)
    add_deid_commands(commands)
    predict = commands.add_parser("predict", help="batch inference with a registered expert")
    predict.add_argument("--model", required=True,
                         help="registered model: NAME (latest version), NAME@ALIAS, NAME/VERSION or a models:/ URI")
    predict.add_argument("--input", required=True, type=Path, help="JSONL: id and text (a note), or id, question and context")
    predict.add_argument("--output", required=True, type=Path, help="JSONL: each input record plus prediction (and answer)")
    route = commands.add_parser("route", help="the router's weight for each expert, per record (to audit routing)")
    route.add_argument("--input", required=True, type=Path, help="JSONL: id and text (a note), or id, question and context")
    route.add_argument("--output", required=True, type=Path,
                       help="JSONL: id, weights and probabilities per expert, the most probable expert, fallback")
    route.add_argument("--model", help="a registered router (NAME, NAME@ALIAS, NAME/VERSION or models:/ URI); "
                                       "default: the one the route stage wrote under models/router")
    route.add_argument("--merged-adapters", type=Path,
                       help="also write each distinct route's mix as one merged PEFT adapter here, named in the output")
    serve = commands.add_parser("serve", help="serve the champion bundle: OpenAI-compatible API, batching, hot reload")
    serve.add_argument("--model", help="a model URI (default: models:/<prefix>-bundle@champion, followed as it moves)")
    serve.add_argument("--host", help="default: serve.host in params.yaml")
    serve.add_argument("--port", type=int, help="default: serve.port in params.yaml")
    from tasks.review.cli import add_review_commands

    add_review_commands(commands)
    promote = commands.add_parser("promote", help="run the promotion gate on the last evaluation, or roll back")
    promote.add_argument("--batch", help="review batch (default: the last evaluation's)")
    promote.add_argument("--rollback", action="store_true", help="give `champion` back to each model's `previous` version")
    promote.add_argument("--model", action="append", help="with --rollback: only this registered model (repeatable)")
    args = parser.parse_args(argv)

    root = Path(args.root).resolve()
    if not (root / "params.yaml").exists():
        parser.error(f"{root}/params.yaml not found: run medlora from the project root or pass --root")

    if args.command == "deid":
        return run_deid_command(args, root)
    if args.command == "serve":
        from tasks.params import load_params
        from tasks.serve.server import serve

        from mlflow.exceptions import MlflowException

        try:
            serve(load_params(root), root, args.model, args.host, args.port)
        except MlflowException as error:
            print(f"error: {error.message}\n(no champion yet? review and run `medlora promote`, or serve a version: "
                  f"--model models:/<prefix>-bundle/N)", file=sys.stderr)
            return 2
        return 0
    if args.command == "predict":
        return run_predict_command(args, root)
    if args.command == "route":
        return run_route_command(args, root)
    if args.command == "review":
        from tasks.params import load_params
        from tasks.review.cli import run_review_command
        from tasks.review.project import open_store

        return run_review_command(args, root, open_store(load_params(root), root))
    if args.command == "promote":
        return run_promote_command(args, root)

    if args.command == "run":
        if args.dry_run and not (args.preset or args.assignments):
            parser.error("--dry-run shows what --preset and --set would change: give one of them")
        return run_pipeline_command(args, root)
    from flows.pipeline import run_stage

    run_stage(args.name, root)
    return 0


def run_pipeline_command(args, root: Path) -> int:
    """Write --preset and --set into params.yaml (as `dvc exp run -S` does, so dvc.lock records them and DVC
    re-runs the stages they touch), then run the pipeline inside one MLflow run that records them."""
    from rich.console import Console
    from rich.markup import escape

    from tasks.params import load_params
    from tasks.run_lock import ProjectBusy, project_lock

    console = Console(stderr=True, soft_wrap=True)
    if args.dry_run:  # changes nothing: no need to wait for a run in progress
        return _run_pipeline_locked(args, root, console)
    try:
        with project_lock(root, load_params(root).pipeline.lock_timeout_s,
                          on_wait=lambda message: console.print(escape(message))):
            return _run_pipeline_locked(args, root, console)
    except ProjectBusy as error:
        console.print("[red]error:[/red]", escape(str(error)))
        return 2


def _run_pipeline_locked(args, root: Path, console) -> int:
    from rich.markup import escape

    from tasks.params import apply_overrides, load_params

    edit = None
    if args.preset or args.assignments:
        try:
            edit = apply_overrides(root, args.preset, args.assignments, write=not args.dry_run)
        except (ValueError, FileNotFoundError) as error:
            console.print("[red]error:[/red]", escape(str(error)))
            return 2
        applied = ", ".join(([f"preset {edit.preset}"] if edit.preset else []) + [f"--set {a}" for a in args.assignments])
        if not edit.changes:
            console.print(escape(f"params.yaml already has {applied}: nothing to change"))
        else:
            console.print(escape(f"params.yaml {'would change' if args.dry_run else 'changed'} ({applied}):"))
            for line in edit.describe():
                console.print(f"  {escape(line)}")
        if args.dry_run:
            return 0

    from flows.pipeline import pipeline_flow, print_summary
    from tasks.tracking import pipeline_run

    started = time.perf_counter()
    with pipeline_run(load_params(root), root, edit):
        reports = pipeline_flow(root=str(root), force=args.force)
    print_summary(reports, time.perf_counter() - started)
    return 0


def add_deid_commands(commands) -> None:
    deid = commands.add_parser("deid", help="PHI detection on its own: train, detect, evaluate")
    actions = deid.add_subparsers(dest="action", required=True)
    train = actions.add_parser("train", help="rebuild the PHI token model from the corpora in params.yaml (and your own)")
    train.add_argument("--skip-missing", action="store_true",
                       help="train without configured corpora that are absent (the model will be weaker)")
    cv = actions.add_parser("cv", help="cross-validate the whole training procedure, grouped by patient")
    for action in (train, cv):
        action.add_argument("--add", action="append", type=Path, default=[], metavar="JSONL",
                            help="also train on these annotated notes (note_id, text, patient_id, spans), e.g. your hospital's")
    cv.add_argument("--folds", type=int, default=5)
    cv.add_argument("--workers", type=int, default=1, help="outer folds trained in parallel (each takes one core)")
    cv.add_argument("--report", type=Path, default=Path("models/deid/cv_report.json"), help="where the figures go (JSON)")
    detect = actions.add_parser("detect", help="write the PHI spans of every note of a file")
    detect.add_argument("--input", required=True, type=Path, help="JSONL with note_id, text and optionally patient_id")
    detect.add_argument("--output", required=True, type=Path, help="JSONL: note_id and spans (start, end, entity_type, score)")
    evaluate = actions.add_parser("evaluate", help="binary token-level recall, precision and F2 against gold PHI")
    evaluate.add_argument("--gold", required=True, type=Path, help="PhysioNet deid directory, presidio-evaluator JSON or JSONL with spans")
    evaluate.add_argument("--format", default="auto", choices=["auto", "physionet", "presidio", "jsonl", "sample"])
    evaluate.add_argument("--spans", type=Path, help="score these detected spans (from `deid detect`) instead of detecting now")
    evaluate.add_argument("--types", default="auto", choices=["auto", "hipaa", "all"],
                          help="hipaa: only gold types HIPAA names (the default for presidio-evaluator data)")
    evaluate.add_argument("--report", type=Path, help="also write the scores to this JSON file")
    evaluate.add_argument("--threshold", type=float,
                          help="score at this token-model threshold instead of the trained one (to trace precision against recall)")
    for action in (detect, evaluate):
        action.add_argument("--workers", type=int, help="processes (default: deidentify.workers)")


def run_deid_command(args, root: Path) -> int:
    import json

    from rich.console import Console

    from tasks.params import load_params

    params = load_params(root).deidentify
    console = Console(stderr=True, soft_wrap=True)
    from tasks.deidentify.corpora import CorpusFormatError, read_corpus
    from tasks.deidentify.harness import detect_texts, evaluate_corpus, write_spans

    try:
        if args.action in ("train", "cv"):
            return _run_deid_training(args, params, root, console)
        if args.action == "detect":
            notes = read_corpus(args.input, "jsonl")
            write_spans(args.output, notes, detect_texts([n.text for n in notes], params, root, args.workers))
            console.print(f"wrote PHI spans of {len(notes)} notes to {args.output}")
            return 0
        result = evaluate_corpus(args.gold, args.format, params, root, args.spans, args.types, args.workers,
                                 threshold=args.threshold)
    except (CorpusFormatError, FileNotFoundError, ValueError) as error:
        console.print(f"[red]error:[/red] {error}")
        return 2
    if result["trained_on"]:
        console.print("[yellow]the model was trained on these notes: the figures are optimistic; "
                      "`medlora deid cv` measures notes of patients it never saw[/yellow]")
    print_scores(f"{result['corpus']}: {result['notes']} notes, {result['types']}", result)
    if args.report:
        args.report.write_text(json.dumps(result, indent=2))
    return 0


def print_scores(title: str, scores: dict) -> None:
    """Token-level recall, precision and F2, and recall per gold type, as two tables."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in ("recall", "precision", "F2", "PHI tokens", "false positives"):
        table.add_column(column, justify="right")
    table.add_row(*(str(scores[k]) for k in ("recall", "precision", "f2", "phi_tokens", "false_positives")))
    by_type = Table(title="recall by gold type")
    by_type.add_column("type")
    by_type.add_column("tokens", justify="right")
    by_type.add_column("recall", justify="right")
    for entity_type, recall in scores["recall_by_type"].items():
        by_type.add_row(entity_type, str(scores["tokens_by_type"][entity_type]), str(recall))
    Console().print(table, by_type)


def _run_deid_training(args, params, root: Path, console) -> int:
    import json

    from tasks.deidentify.crossval import cross_validate, write_report
    from tasks.deidentify.training import check_sources, train_and_save, with_added_notes

    params = with_added_notes(params, args.add)
    if args.action == "cv":
        check_sources(params.model, root, skip_missing=False)
        report = cross_validate(params, root, args.folds, args.workers)
        write_report(report, root / args.report)
        for corpus, scores in report["corpora"].items():
            print_scores(f"{corpus}: {args.folds}-fold cross-validation, pooled out of fold, {scores['types']}", scores)
        console.print(f"wrote {args.report}")
        return 0
    check_sources(params.model, root, args.skip_missing)
    console.print_json(json.dumps(train_and_save(params, root)))
    console.print(f"wrote {params.model.path} and its model card")
    return 0


def _run_batch_command(work, uri: str | None, verb: str, output: Path) -> int:
    """Run `work()` (it returns PredictionCounts) and report: 0 done, 1 some lines rejected, 2 nothing done
    because the model or the input could not be loaded."""
    from mlflow.exceptions import MlflowException
    from rich.console import Console

    console = Console(stderr=True, soft_wrap=True)
    try:
        counts = work()
    except MlflowException as error:
        console.print(f"[red]error:[/red] cannot load {uri}: {error.message}")
        return 2
    except (FileNotFoundError, ValueError) as error:
        console.print(f"[red]error:[/red] {error}")
        return 2
    console.print(f"{counts.read} records read, {counts.predicted} {verb}, {counts.rejected} rejected; wrote {output}")
    if counts.rejected:
        console.print(f"[yellow]{counts.rejected} records were rejected: their output lines carry an 'error' field[/yellow]")
        return 1
    return 0


def run_predict_command(args, root: Path) -> int:
    import mlflow

    from tasks.finetune.predict import model_uri, predict_file
    from tasks.params import load_params
    from tasks.tracking import configure_tracking

    configure_tracking(load_params(root), root)
    uri = model_uri(args.model)
    return _run_batch_command(
        lambda: predict_file(mlflow.pyfunc.load_model(uri).unwrap_python_model(), args.input, args.output),
        uri, "predicted", args.output)


def run_route_command(args, root: Path) -> int:
    import mlflow

    from tasks.finetune.predict import model_uri
    from tasks.params import load_params
    from tasks.route.serve import route_file

    params = load_params(root)
    uri = model_uri(args.model) if args.model else None

    def route():
        if uri:
            from tasks.tracking import configure_tracking

            configure_tracking(params, root)
            system = mlflow.pyfunc.load_model(uri).unwrap_python_model().system
        else:
            from flows.finetune import ADAPTERS_DIR
            from tasks.route.serve import RoutedSystem
            from tasks.route.stage import ROUTER_MODEL_DIR

            from tasks.route.requests import routed_experts

            experts = routed_experts(params, root / ADAPTERS_DIR)
            system = RoutedSystem(params.base_model, root / ROUTER_MODEL_DIR, {e: root / ADAPTERS_DIR / e for e in experts}, root)
        return route_file(system, args.input, args.output, merged_dir=args.merged_adapters,
                          cache_size=params.route.combination_cache, grid=params.route.combination_grid)

    return _run_batch_command(route, uri, "routed", args.output)


def run_promote_command(args, root: Path) -> int:
    from rich.console import Console
    from rich.table import Table

    from flows.promote import promote_flow, rollback_flow

    console = Console(stderr=True, soft_wrap=True)
    try:
        rows = rollback_flow(root=str(root), models=args.model) if args.rollback else promote_flow(root=str(root), batch=args.batch)
    except (FileNotFoundError, ValueError) as error:
        console.print(f"[red]error:[/red] {error}")
        return 2
    table = Table(title="rollback" if args.rollback else "promotion gate")
    for column in rows[0] if rows else ["model"]:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    Console(width=160).print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
