"""An expert adapter as an MLflow pyfunc model: base model + PEFT adapter, notes in, summaries out."""

from __future__ import annotations

import mlflow.pyfunc
import pandas as pd


class ExpertAdapterModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from peft import PeftModel

        from tasks.finetune.base_model import load_base, pick_device

        self.device = pick_device("auto")
        config = context.model_config
        self.max_source_tokens = int(config.get("max_source_tokens", 160))
        self.max_new_tokens = int(config.get("max_new_tokens", 48))
        self.tokenizer, base = load_base(config["base_model"], device=self.device)
        self.model = PeftModel.from_pretrained(base, context.artifacts["adapter"]).eval()

    def predict(self, context, model_input: pd.DataFrame, params=None) -> list[str]:
        import torch

        from tasks.finetune.examples import prompt_ids

        summaries = []
        for note in model_input["text"]:
            ids = torch.tensor([prompt_ids(self.tokenizer, note, self.max_source_tokens)], device=self.device)
            with torch.no_grad():
                out = self.model.generate(input_ids=ids, max_new_tokens=self.max_new_tokens, do_sample=False,
                                          pad_token_id=self.tokenizer.pad_token_id)
            summaries.append(self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip())
        return summaries
