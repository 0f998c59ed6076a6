"""Which bundle version is served, and hot reload: when the registry's alias (`champion`) moves, by a
promotion or a rollback, the new version is loaded beside the old one and then swapped in at once.
Batches in flight keep the model they started on; the old one is freed when the last of them ends."""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass

from tasks.serve.engine import ServedSystem

log = logging.getLogger("medlora.serve")
ALIAS_URI = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/@]+)$")
VERSION_URI = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")


@dataclass(frozen=True)
class ModelSource:
    uri: str
    name: str = ""
    alias: str = ""      # set: follow this alias
    version: str = ""

    @classmethod
    def parse(cls, uri: str) -> ModelSource:
        if match := ALIAS_URI.match(uri):
            return cls(uri, match["name"], match["alias"])
        if match := VERSION_URI.match(uri):
            return cls(uri, match["name"], version=match["version"])
        return cls(uri)


def load_served(uri: str, name: str = "", version: str = "") -> ServedSystem:
    import mlflow.pyfunc

    bundle = mlflow.pyfunc.load_model(uri).unwrap_python_model()
    if not hasattr(bundle, "served"):
        raise ValueError(f"{uri} is not a medlora bundle (a <prefix>-bundle model registered by the route stage)")
    served = bundle.served
    served.name, served.version = name or served.name, version
    return served


class ModelHolder:
    """The served system; `current` is swapped whole (one reference assignment), never changed in place."""

    def __init__(self, source: ModelSource, on_switch=None):
        self.source = source
        self.current: ServedSystem | None = None
        self.on_switch = on_switch or (lambda old, new: None)
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    def resolve_version(self) -> str:
        if not self.source.alias:
            return self.source.version
        from mlflow import MlflowClient

        return str(MlflowClient().get_model_version_by_alias(self.source.name, self.source.alias).version)

    def load(self) -> bool:
        """Load the version the source points at if it is not the one served; True when it switched."""
        with self._lock:
            version = self.resolve_version()
            if self.current is not None and version == self.current.version:
                return False
            uri = f"models:/{self.source.name}/{version}" if self.source.alias else self.source.uri
            new = load_served(uri, self.source.name, version)
            old, self.current = self.current, new
            log.info("serving %s version %s", self.source.name or self.source.uri, version or "(unversioned)")
            self.on_switch(old, new)
            return old is not None

    def watch(self, interval_s: float) -> threading.Thread:
        """Poll the alias every `interval_s` in a background thread (nothing to watch without one)."""

        def loop() -> None:
            while not self._stopping.wait(interval_s):
                try:
                    self.load()
                except Exception as error:  # noqa: BLE001 - keep serving the current version
                    log.error("could not reload %s: %s", self.source.uri, error)

        thread = threading.Thread(target=loop, name="medlora-reload", daemon=True)
        if self.source.alias:
            thread.start()
        return thread

    def stop(self) -> None:
        self._stopping.set()
