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
    stage = commands.add_parser("stage", help="run one stage (what dvc repro calls)")
    from flows.pipeline import STAGE_FLOWS

    stage.add_argument("name", choices=list(STAGE_FLOWS))
    args = parser.parse_args(argv)

    root = Path(args.root).resolve()
    if not (root / "params.yaml").exists():
        parser.error(f"{root}/params.yaml not found: run medlora from the project root or pass --root")

    from flows.pipeline import pipeline_flow, print_summary, run_stage

    if args.command == "stage":
        run_stage(args.name, root)
        return 0
    started = time.perf_counter()
    reports = pipeline_flow(root=str(root), force=args.force)
    print_summary(reports, time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
