"""One pipeline run per project at a time.

Two runs in one project would race on params.yaml, DVC's outputs and dvc.lock, and the MLflow registry.
`medlora run` and the pipeline flow (a deployment's run too) hold an OS file lock on `.medlora.lock` for the
whole run: a second run waits up to `pipeline.lock_timeout_s` for it, then stops with a message naming
the run that holds it. The OS releases the lock when its process dies, so a killed run never blocks the
next one; the note beside it (`.medlora.lock.json`) only says who holds it."""

from __future__ import annotations

import json
import os
import socket
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock, Timeout

LOCK_FILE = ".medlora.lock"
HOLDER_FILE = ".medlora.lock.json"


class ProjectBusy(RuntimeError):
    """Another pipeline run holds the project."""


def _lock(root: Path) -> FileLock:
    # One instance per path, shared by every thread: the CLI takes the lock, then the pipeline flow it calls
    # (possibly on another thread) takes it again, re-entrantly.
    return FileLock(root / LOCK_FILE, is_singleton=True, thread_local=False)


def holder(root: Path) -> dict | None:
    try:
        return json.loads((root / HOLDER_FILE).read_text())
    except (OSError, ValueError):
        return None


def _describe(found: dict | None) -> str:
    if not found:
        return "another medlora run"
    described = f"the run started at {found.get('started', '?')} by pid {found.get('pid', '?')} on {found.get('host', '?')}"
    if found.get("flow_run"):
        described += f" (Prefect flow run {found['flow_run']})"
    return described


@contextmanager
def project_lock(root: str | Path, timeout_s: float, flow_run: str | None = None, on_wait=None):
    """Hold the project for one run. timeout_s: 0 refuses at once, < 0 waits as long as it takes.
    on_wait(message) is called once if the lock is busy and we are going to wait."""
    root = Path(root).resolve()
    lock = _lock(root)
    outermost = not lock.is_locked
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if timeout_s == 0:
            raise ProjectBusy(f"{root} is busy: {_describe(holder(root))} holds {root / LOCK_FILE}. Wait for it to "
                              "finish, or set pipeline.lock_timeout_s in params.yaml to queue behind it") from None
        if on_wait is not None:
            on_wait(f"waiting for {_describe(holder(root))} to finish"
                    + ("" if timeout_s < 0 else f" (at most {timeout_s:.0f} s)"))
        try:
            lock.acquire(timeout=timeout_s)
        except Timeout:
            raise ProjectBusy(f"{root} is still busy after {timeout_s:.0f} s: {_describe(holder(root))} holds "
                              f"{root / LOCK_FILE}") from None
    try:
        if outermost:
            (root / HOLDER_FILE).write_text(json.dumps({
                "pid": os.getpid(), "host": socket.gethostname(), "flow_run": flow_run,
                "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}))
        yield
    finally:
        if outermost:
            (root / HOLDER_FILE).unlink(missing_ok=True)
        lock.release()
