"""What a router sees of a request: two cheap views, used together.

- the base model's hidden state at decoder layer `layer`, mean-pooled over the prompt (only the first
  `layer` layers run; serving pays for them on every routed request, so the route stage picks the
  cheapest candidate layer that routes about as well as the best, tasks/route/stage.py);
- a hashed TF-IDF bag of the request's words.

On MTSamples each view alone routes about as well as TF-IDF with logistic regression (0.88 to 0.90
held out); together they do better (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tasks.finetune.examples import Request
from tasks.finetune.inference import pooled_hidden_states


def decoder_of(model):
    """The decoder stack (embeddings, layers, norm) of a causal LM, also inside a PEFT wrapper."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    return causal_lm.model


def depth_of(model) -> int:
    return len(decoder_of(model).layers)


def request_features(model, tokenizer, requests: Sequence[Request], layers: Sequence[int], note_tokens: int,
                     question_tokens: int, batch_size: int = 16, precision: str = "auto",
                     progress: bool = False) -> dict[int, torch.Tensor]:
    """Per layer (0: the last): (requests, hidden size) float32, that layer's output under the final norm,
    mean over the prompt's tokens, in one pass. Prompts are cut as the experts see them."""
    depth = depth_of(model)
    for layer in layers:
        if not 0 <= layer <= depth:
            raise ValueError(f"route.layer is {layer}: the base model has decoder layers 1 to {depth} (0: the last)")
    pooled = pooled_hidden_states(decoder_of(model), tokenizer, requests, note_tokens, question_tokens,
                                  sorted({layer or depth for layer in layers}), batch_size, precision, progress)
    return {layer: pooled[layer or depth] for layer in layers}


WORD = re.compile(r"(?u)\b\w\w+\b")


class LexicalVectoriser:
    """Hashed TF-IDF of a request's words (sublinear term frequency, L2-normalised): the lexical half of
    the features. Specialty vocabulary ("laminectomy", "cystoscopy") separates experts that hidden
    states mix up; hashing needs no vocabulary file and costs microseconds per note."""

    def __init__(self, buckets: int, idf: torch.Tensor | None = None):
        self.buckets = buckets
        self.idf = idf if idf is not None else torch.ones(buckets)

    def _counts(self, text: str) -> dict[int, int]:
        counts: dict[int, int] = {}
        for word in WORD.findall(text.lower()):
            bucket = zlib.crc32(word.encode()) % self.buckets
            counts[bucket] = counts.get(bucket, 0) + 1
        return counts

    def fit(self, requests: Sequence[Request]) -> LexicalVectoriser:
        document_frequency = torch.zeros(self.buckets)
        for request in requests:
            document_frequency[list(self._counts(request.words))] += 1
        self.idf = torch.log((1 + len(requests)) / (1 + document_frequency)) + 1
        return self

    def transform(self, requests: Sequence[Request]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        bags = []
        for request in requests:
            counts = self._counts(request.words)
            ids = torch.tensor(sorted(counts), dtype=torch.long)
            weights = (1 + torch.log(torch.tensor([float(counts[i]) for i in ids.tolist()]))) * self.idf[ids]
            bags.append((ids, weights / weights.norm().clamp_min(1e-12)))
        return bags


@dataclass
class RequestFeatures:
    """Per request: the pooled hidden state, and the hashed TF-IDF bag (ids and weights)."""

    hidden: torch.Tensor
    bags: list[tuple[torch.Tensor, torch.Tensor]]

    def __len__(self) -> int:
        return len(self.hidden)

    def __getitem__(self, index) -> RequestFeatures:
        rows = torch.as_tensor(index)
        rows = rows.nonzero().flatten() if rows.dtype == torch.bool else rows.long().reshape(-1)
        return RequestFeatures(self.hidden[rows], [self.bags[i] for i in rows.tolist()])

    def bag_inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ids, offsets and per-id weights as nn.EmbeddingBag takes them."""
        lengths = torch.tensor([len(ids) for ids, _ in self.bags], dtype=torch.long)
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]])
        ids = torch.cat([ids for ids, _ in self.bags]) if self.bags else torch.zeros(0, dtype=torch.long)
        weights = torch.cat([w for _, w in self.bags]) if self.bags else torch.zeros(0)
        return ids, offsets, weights

    @staticmethod
    def concat(parts: Sequence[RequestFeatures]) -> RequestFeatures:
        return RequestFeatures(torch.cat([p.hidden for p in parts]), [bag for p in parts for bag in p.bags])


def featurise(model, tokenizer, requests: Sequence[Request], vectoriser: LexicalVectoriser | None, settings: dict,
              batch_size: int = 16, precision: str = "auto", progress: bool = False) -> RequestFeatures:
    """Both views of each request; `settings` holds layer, note_tokens and question_tokens."""
    return featurise_layers(model, tokenizer, requests, vectoriser, settings, [settings["layer"]], batch_size, precision,
                            progress)[settings["layer"]]


def featurise_layers(model, tokenizer, requests: Sequence[Request], vectoriser: LexicalVectoriser | None, settings: dict,
                     layers: Sequence[int], batch_size: int = 16, precision: str = "auto",
                     progress: bool = False) -> dict[int, RequestFeatures]:
    """Both views of each request with the hidden state of each of `layers` (one pass over the prompts)."""
    hidden = request_features(model, tokenizer, requests, layers, settings["note_tokens"], settings["question_tokens"],
                              batch_size, precision, progress)
    bags = vectoriser.transform(requests) if vectoriser is not None else [(torch.zeros(0, dtype=torch.long), torch.zeros(0))] * len(requests)
    return {layer: RequestFeatures(hidden[layer], bags) for layer in layers}
