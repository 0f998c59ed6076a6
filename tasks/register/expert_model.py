"""An expert adapter as an MLflow pyfunc model: base model + PEFT adapter; notes or questions in, answers out."""

from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc
import pandas as pd


class ExpertAdapterModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from peft import PeftModel

        from tasks.base_model import load_base, pick_device

        self.device = pick_device("auto")
        config = context.model_config
        self.max_source_tokens = int(config.get("max_source_tokens", 160))
        self.max_new_tokens = int(config.get("max_new_tokens", 48))
        self.batch_size = int(config.get("batch_size", 8))
        self.precision = config.get("precision", "auto")  # the policy it was evaluated with
        self.tokenizer, base = load_base(config["base_model"], device=self.device)
        self.model = PeftModel.from_pretrained(base, context.artifacts["adapter"]).eval()
        self.adapter_dir = Path(context.artifacts["adapter"])

    def evaluation_engine(self):
        from tasks.finetune.inference import AdapterEngine, file_fingerprint, mixture_identity, weights_fingerprint
        from tasks.route.mixing import ADAPTER_WEIGHTS

        identity = mixture_identity(weights_fingerprint(self.model), [(file_fingerprint(self.adapter_dir / ADAPTER_WEIGHTS), 1.0)])
        return AdapterEngine(self.model, self.tokenizer, identity, self.precision)

    def respond(self, requests, progress: bool = False) -> list[dict]:
        from tasks.finetune.inference import respond

        return respond(self.model, self.tokenizer, requests, self.max_source_tokens, self.max_new_tokens,
                       self.batch_size, progress, precision=self.precision)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        """Rows with `text` (a note) or `question` and `context`; returns `prediction` and, for questions, `answer`."""
        from tasks.finetune.examples import Request

        records = model_input.to_dict(orient="records")
        requests = [Request.from_record(record, f"input row {row}") for row, record in enumerate(records)]
        responses = self.respond(requests)
        return pd.DataFrame([{"prediction": r["prediction"], "answer": r.get("answer")} for r in responses])
