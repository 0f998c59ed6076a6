"""Run a benchmark step in a fresh process (spawned: nothing inherited but its arguments)."""

from __future__ import annotations

import multiprocessing
from queue import Empty


def measure(target, *args) -> dict:
    """Call `target(*args, queue)` in a spawned process and return what it puts on the queue."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(*args, queue))
    process.start()
    while True:
        try:
            result = queue.get(timeout=5)
            break
        except Empty:
            if not process.is_alive():
                if process.exitcode == -9:
                    raise SystemExit(f"{target.__name__} was killed (SIGKILL), most likely out of memory") from None
                raise SystemExit(f"{target.__name__} failed (exit code {process.exitcode}); see its traceback above") from None
    process.join()
    return result
