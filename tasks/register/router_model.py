"""The router as an MLflow pyfunc model: base model + router + the experts it routes to, mixed per request."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow.pyfunc
import pandas as pd

ADAPTER_ARTIFACT_PREFIX = "adapter-"


class RoutedExpertsModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from tasks.route.serve import RoutedSystem

        config = context.model_config
        adapters = {key.removeprefix(ADAPTER_ARTIFACT_PREFIX): Path(path) for key, path in context.artifacts.items()
                    if key.startswith(ADAPTER_ARTIFACT_PREFIX)}
        self.system = RoutedSystem(config["base_model"], Path(context.artifacts["router"]), adapters,
                                   generation={"max_new_tokens": int(config.get("max_new_tokens", 48)),
                                               "batch_size": int(config.get("batch_size", 8))},
                                   precision=config.get("precision", "auto"))

    def evaluation_engine(self):
        return self.system

    def route(self, requests, progress: bool = False) -> list[dict]:
        return self.system.route(requests, progress)

    def respond(self, requests, progress: bool = False) -> list[dict]:
        return self.system.respond(requests, progress)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        """Rows with `text` (a note) or `question` and `context`; returns `prediction`, `answer` (questions),
        the most probable `expert` and the mixing `weights` (JSON)."""
        from tasks.finetune.examples import Request

        records = model_input.to_dict(orient="records")
        requests = [Request.from_record(record, f"input row {row}") for row, record in enumerate(records)]
        responses = self.respond(requests)
        return pd.DataFrame([{"prediction": r["prediction"], "answer": r.get("answer"), "expert": r["route"]["expert"],
                              "weights": json.dumps(r["route"]["weights"])} for r in responses])
