"""Start `medlora serve`: load the bundle (following `champion` when the model is given by alias), start
the batching thread and the reload watcher, and run the API on uvicorn until interrupted."""

from __future__ import annotations

import logging
import threading
from contextlib import asynccontextmanager
from pathlib import Path

from tasks.params import Params
from tasks.serve.api import create_app
from tasks.serve.batching import Batcher, ServeMetrics
from tasks.serve.reload import ModelHolder, ModelSource

log = logging.getLogger("medlora.serve")


def default_model_uri(params: Params) -> str:
    return params.serve.model or f"models:/{params.tracking.model_prefix}-bundle@champion"


def build_server(params: Params, model_uri: str):
    """The app; starting it starts the batching thread and loads the model in the background (/health
    answers at once, /ready once the model is loaded), then watches the alias for reloads."""
    settings = params.serve
    metrics = ServeMetrics()
    source = ModelSource.parse(model_uri)

    def switched(old, new) -> None:
        if old is not None:
            metrics.reloads.inc()
            metrics.model_version.labels(old.name, old.version).set(0)
        metrics.model_version.labels(new.name, new.version).set(1)

    holder = ModelHolder(source, switched)
    batcher = Batcher(lambda: holder.current, settings.batch_window_ms, settings.max_batch_size, settings.max_queue, metrics)

    def load_then_watch() -> None:
        try:
            holder.load()
        except Exception as error:  # noqa: BLE001 - /ready stays 503; the log says why
            log.error("could not load %s: %s", model_uri, error)
            return
        holder.watch(settings.reload_interval_s)

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        threading.Thread(target=load_then_watch, name="medlora-load", daemon=True).start()
        yield
        holder.stop()
        batcher.stop()

    return create_app(holder, batcher, metrics, settings.max_request_chars, lifespan)


def serve(params: Params, root: Path, model_uri: str | None = None, host: str | None = None, port: int | None = None) -> None:
    import uvicorn

    from tasks.tracking import configure_tracking

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    configure_tracking(params, root)
    uri = model_uri or default_model_uri(params)
    ModelHolder(ModelSource.parse(uri)).resolve_version()  # fails here, with the registry's reason, before serving
    app = build_server(params, uri)
    log.info("serving %s on http://%s:%s", uri, host or params.serve.host, port or params.serve.port)
    uvicorn.run(app, host=host or params.serve.host, port=port or params.serve.port, log_level="info")
