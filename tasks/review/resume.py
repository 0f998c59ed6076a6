"""Resume the Prefect flow runs that paused until a review batch was finished."""

from __future__ import annotations

from uuid import UUID

from rich.console import Console
from rich.text import Text

from tasks.review.store import ReviewStore


def resume_waiting_runs(store: ReviewStore, batch: str, console: Console | None = None) -> list[str]:
    """Resume every run waiting on `batch` with run_input {"queue_complete": True}; return the ids resumed.

    A run that is gone, timed out or finished is forgotten with a warning. A run not paused yet, or one that
    cannot be reached (Prefect down), is reported as a warning and stays registered, so that
    `medlora review resume` can try again.
    Neither undoes the decision that triggered the resume."""
    waiting = store.waiting_runs(batch)
    if not waiting:
        return []
    # imported here: Prefect is slow to import and rarely needed
    from prefect.exceptions import FlowPauseTimeout, NotPausedError, ObjectNotFound
    from prefect.flow_runs import resume_flow_run

    console = console or Console(stderr=True, soft_wrap=True)
    resumed = []
    for flow_run_id in waiting:
        try:
            # resume_flow_run dispatches on the caller: inside an event loop it would return a coroutine. The CLI
            # and the web page are synchronous, and _sync=True makes that explicit whatever the caller.
            resume_flow_run(UUID(flow_run_id), run_input={"queue_complete": True}, _sync=True)
        except NotPausedError as error:
            if not _finished(flow_run_id):  # registered, but not paused yet: it may still pause
                console.print(Text.assemble(("warning:", "yellow"), f" flow run {flow_run_id} is not paused yet; "
                                            f"once it is, run `medlora review resume --batch {batch}`"))
                continue
            store.clear_waiting_run(flow_run_id)
            console.print(Text.assemble(("warning:", "yellow"), f" flow run {flow_run_id} no longer waits for review "
                                        f"batch {batch} ({error}); forgot it"))
            continue
        except (FlowPauseTimeout, ObjectNotFound) as error:  # nothing left to resume
            store.clear_waiting_run(flow_run_id)
            console.print(Text.assemble(("warning:", "yellow"), f" flow run {flow_run_id} no longer waits for review "
                                        f"batch {batch} ({type(error).__name__}: {error}); forgot it"))
            continue
        except Exception as error:  # noqa: BLE001 (failing to reach Prefect must not lose the decision)
            console.print(Text.assemble(("warning:", "yellow"), f" review batch {batch} is complete but flow run "
                                        f"{flow_run_id} could not be resumed ({type(error).__name__}: {error}); "
                                        f"run `medlora review resume --batch {batch}` once Prefect is reachable, "
                                        "or resume it from the Prefect UI"))
            continue
        store.clear_waiting_run(flow_run_id)
        resumed.append(flow_run_id)
        console.print(f"review batch {batch} is complete: resumed flow run {flow_run_id}")
    return resumed


def _finished(flow_run_id: str) -> bool:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(UUID(flow_run_id)).state
    return state is None or state.is_final()


def after_decision(store: ReviewStore, batch: str, console: Console | None = None) -> list[str]:
    """Call after each decision: once `batch` has nothing pending, resume the runs waiting on it."""
    if store.items(batch=batch, status="pending"):
        return []
    return resume_waiting_runs(store, batch, console)
