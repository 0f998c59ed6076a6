"""Two pipeline runs in one project: the second waits or is refused (two runs through a Prefect worker that
queue behind each other and end consistent: tests/test_deployments.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time


from flows.cli import main
from tasks.params import apply_overrides
from tasks.run_lock import HOLDER_FILE, ProjectBusy, project_lock
from tests.conftest import _venv_env

HOLD = """
import sys, time
from tasks.run_lock import project_lock
with project_lock(sys.argv[1], 0):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_second_run_is_refused_with_the_holder_named(tiny_project, capsys):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tiny_project)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["--root", str(tiny_project), "run", "--preset", "tiny"]) == 2
        message = " ".join(capsys.readouterr().err.split())
        assert "is busy" in message and f"pid {holder.pid}" in message and "pipeline.lock_timeout_s" in message
        assert not (tiny_project / "reports").exists()  # nothing ran

        # waiting a bounded time, then giving up, says how long it waited
        apply_overrides(tiny_project, assignments=["pipeline.lock_timeout_s=1"])
        started = time.perf_counter()
        assert main(["--root", str(tiny_project), "run"]) == 2
        assert time.perf_counter() - started >= 1
        message = " ".join(capsys.readouterr().err.split())
        assert "waiting for the run started" in message and "still busy after 1 s" in message
    finally:
        holder.kill()
        holder.wait()
    # a killed run leaves no lock behind: the OS released it with the process
    with project_lock(tiny_project, 0):
        assert json.loads((tiny_project / HOLDER_FILE).read_text())["pid"] == os.getpid()
    assert not (tiny_project / HOLDER_FILE).exists()


def test_the_lock_is_reentrant_within_a_run_and_exclusive_across_processes(tmp_path):
    with project_lock(tmp_path, 0):
        with project_lock(tmp_path, 0):  # the CLI holds it, then the pipeline flow it calls takes it again
            pass
        assert (tmp_path / HOLDER_FILE).exists()  # still held by the outer run
        probe = subprocess.run([sys.executable, "-c", "import sys; from tasks.run_lock import project_lock\n"
                                "with project_lock(sys.argv[1], 0): pass", str(tmp_path)],
                               capture_output=True, text=True, env=_venv_env())
        assert probe.returncode != 0 and ProjectBusy.__name__ in probe.stderr
