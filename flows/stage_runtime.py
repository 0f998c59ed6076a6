"""What every stage flow needs: the project root, its params, and a timed report written at the end."""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

from tasks.params import Params, load_params
from tasks.stages import StageReport


@contextmanager
def stage_run(stage: str, root: str | Path):
    """Yields (root, params, report); fills in the seconds and writes reports/<stage>.json."""
    root = Path(root).resolve()
    params: Params = load_params(root)
    report = StageReport(stage=stage, seconds=0.0)
    started = time.perf_counter()
    yield root, params, report
    report.seconds = round(time.perf_counter() - started, 2)
    report.write(root)
