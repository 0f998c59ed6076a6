"""Target loss of requests under mixtures of experts: the reward of reinforcement routing, the
objective of gradient-free composition and the downstream score of every routing scheme."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm import tqdm

from tasks.finetune.examples import TokenizedExample
from tasks.finetune.precision import autocast, resolve_precision
from tasks.finetune.train import collate, target_losses
from tasks.route.mixing import ExpertMixture


class MixtureLoss:
    """Mean loss per target token of each example under the weights given for it.

    `subset_loss` scores an equal mix of a set of experts and remembers it, so that a request and a
    combination are scored once however often a strategy samples them."""

    def __init__(self, mixture: ExpertMixture, examples: Sequence[TokenizedExample], pad_id: int,
                 batch_size: int = 8, precision: str = "fp32"):
        self.mixture, self.examples, self.pad_id = mixture, list(examples), pad_id
        self.device = next(mixture.model.parameters()).device
        self.batch_size, self.precision = batch_size, resolve_precision(precision, self.device)
        self._subset_losses: dict[tuple[int, tuple[int, ...]], float] = {}
        self.forward_rows = 0

    @torch.no_grad()
    def losses(self, indices: Sequence[int], weights: torch.Tensor, progress: bool = False,
               description: str = "scoring") -> torch.Tensor:
        """Loss per target token of examples[indices[i]] under weights[i] (one row per index, or one row for all)."""
        weights = torch.as_tensor(weights, dtype=torch.float)
        if weights.dim() == 1:
            weights = weights.expand(len(indices), -1)
        order = sorted(range(len(indices)), key=lambda i: len(self.examples[indices[i]].input_ids))
        result = torch.zeros(len(indices))
        self.mixture.model.eval()
        with tqdm(total=len(indices), desc=description, unit="request", disable=not progress) as bar:
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                batch = [self.examples[indices[i]] for i in chunk]
                with self.mixture.mixed(weights[chunk], len(chunk)), autocast(self.device, self.precision):
                    sums = target_losses(self.mixture.model, collate(batch, self.pad_id, self.device))
                result[chunk] = sums.float().cpu() / torch.tensor([e.loss_weight for e in batch])
                self.forward_rows += len(chunk)
                bar.update(len(chunk))
        return result

    def subset_losses(self, pairs: Sequence[tuple[int, tuple[int, ...]]]) -> torch.Tensor:
        """Loss of example i under an equal mix of the experts in each (i, subset) pair, cached."""
        missing = sorted({pair for pair in pairs if pair not in self._subset_losses})
        if missing:
            weights = torch.zeros(len(missing), len(self.mixture.names))
            for row, (_, subset) in enumerate(missing):
                weights[row, list(subset)] = 1.0 / len(subset)
            for pair, loss in zip(missing, self.losses([i for i, _ in missing], weights).tolist()):
                self._subset_losses[pair] = loss
        return torch.tensor([self._subset_losses[pair] for pair in pairs])

    def mean_loss(self, indices: Sequence[int], weights: torch.Tensor, progress: bool = False, description: str = "scoring") -> float:
        """Mean loss per target token over the examples (every target token weighs the same)."""
        losses = self.losses(indices, weights, progress, description)
        tokens = torch.tensor([self.examples[i].loss_weight for i in indices])
        return float((losses * tokens).sum() / tokens.sum())
