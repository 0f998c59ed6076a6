"""The review-resume deployment: on its schedule, resume the pipeline runs that paused for a review batch
once that batch has nothing pending (what `medlora review resume` does by hand, and the review page does
after the last decision)."""

from pathlib import Path

from prefect import flow, get_run_logger

from tasks.params import load_params
from tasks.review.project import open_store
from tasks.review.resume import resume_waiting_runs


@flow(name="review-resume", persist_result=False)
def review_resume_flow(root: str = ".", batch: str | None = None) -> dict:
    logger = get_run_logger()
    root = Path(root).resolve()
    store = open_store(load_params(root), root)
    batch = batch or store.latest_batch()
    if batch is None:
        logger.info("the review queue is empty: nothing to resume")
        return {"batch": None, "pending": 0, "waiting": 0, "resumed": []}
    pending = len(store.items(batch=batch, status="pending"))
    waiting = store.waiting_runs(batch)
    if pending:
        logger.info("review batch %s: %s items pending, %s runs waiting for it", batch, pending, len(waiting))
        return {"batch": batch, "pending": pending, "waiting": len(waiting), "resumed": []}
    resumed = resume_waiting_runs(store, batch)
    logger.info("review batch %s is complete: %s of %s waiting runs resumed", batch, len(resumed), len(waiting))
    return {"batch": batch, "pending": 0, "waiting": len(waiting), "resumed": resumed}
