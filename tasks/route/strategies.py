"""Ways to train a router, peers behind one interface: `STRATEGIES[name](problem, settings, seed)`.

- supervised: cross-entropy on the specialty label of each request;
- contrastive: a projection trained so that a request sits near the past requests of its expert
  (a memory queue per expert supplies them) and far from the others'; routes by prototype similarity;
- reinforce: no labels. For each request, sample k experts from the router several times, score the
  target loss under an equal mix of each sample, and push the router towards samples that beat the
  others' mean (leave-one-out baseline). It can find that an expert helps outside its own label.

Gradient-free composition of a new expert is in tasks/route/compose.py; it uses the same loss oracle.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm import tqdm

from tasks.params import RouteParams
from tasks.route.features import LexicalVectoriser, RequestFeatures
from tasks.route.router import PrototypeScorer, Router

NO_LABEL = -1


@dataclass
class RoutingProblem:
    """What every strategy is given. Labels index `experts` (NO_LABEL where unknown); `subset_losses`
    scores (request index, tuple of expert indices) pairs and is needed by reinforce only."""

    experts: list[str]
    train_features: RequestFeatures
    train_labels: torch.Tensor
    val_features: RequestFeatures
    val_labels: torch.Tensor
    vectoriser: LexicalVectoriser | None = None
    settings: dict = field(default_factory=dict)
    subset_losses: Callable[[list[tuple[int, tuple[int, ...]]]], torch.Tensor] | None = None


@dataclass
class TrainingLog:
    loss_per_epoch: list[float] = field(default_factory=list)
    val_accuracy_per_epoch: list[float] = field(default_factory=list)
    best_epoch: int = 0
    extra: dict = field(default_factory=dict)


def accuracy(router: Router, features: RequestFeatures, labels: torch.Tensor) -> float:
    labelled = labels != NO_LABEL
    if not labelled.any():
        return float("nan")
    predicted = router.probabilities(features[labelled]).argmax(-1)
    return float((predicted == labels[labelled]).float().mean())


def _minibatches(count: int, size: int, generator: torch.Generator) -> list[torch.Tensor]:
    return list(torch.randperm(count, generator=generator).split(size))


def _keep_best(router: Router, problem: RoutingProblem, log: TrainingLog, epoch: int, best: dict) -> None:
    """Remember the weights of the epoch with the best validation accuracy (the first such epoch)."""
    score = accuracy(router, problem.val_features, problem.val_labels)
    log.val_accuracy_per_epoch.append(round(score, 4))
    if math.isnan(score) or score > best.get("score", -1.0):
        best.update(score=score, state={k: v.clone() for k, v in router.state_dict().items()})
        log.best_epoch = epoch


def supervised(problem: RoutingProblem, params: RouteParams, seed: int, progress: bool = False) -> tuple[Router, TrainingLog]:
    """Multinomial logistic regression on both views: convex, so solved to the optimum with full-batch
    L-BFGS rather than approached with noisy minibatches; `epochs` is the number of L-BFGS iterations,
    taken in rounds of ten with the validation accuracy checked after each round."""
    labelled = problem.train_labels != NO_LABEL
    features, labels = problem.train_features[labelled], problem.train_labels[labelled]
    if not len(labels):
        raise ValueError("supervised routing needs labelled requests; none of the training notes has an expert")
    torch.manual_seed(seed)
    router = Router.for_features(problem.experts, features, problem.vectoriser, "linear", settings=problem.settings)
    optimizer = torch.optim.LBFGS(router.parameters(), lr=1.0, max_iter=10, history_size=20, line_search_fn="strong_wolfe")
    log, best = TrainingLog(), {}

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        loss = (F.cross_entropy(router(features), labels, label_smoothing=params.label_smoothing)
                + router.penalty(params.hidden_l2, params.lexical_l2))
        loss.backward()
        return loss

    router.train()
    rounds = math.ceil(params.epochs / 10)
    for epoch in tqdm(range(1, rounds + 1), desc="router (supervised)", unit="round", disable=not progress):
        log.loss_per_epoch.append(round(float(optimizer.step(objective).detach()), 5))
        _keep_best(router, problem, log, epoch, best)
    router.load_state_dict(best["state"])
    return router.eval(), log


def contrastive_loss(embeddings: torch.Tensor, labels: torch.Tensor, keys: torch.Tensor, key_labels: torch.Tensor,
                     excluded: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE with every key of the same expert a positive: -log(sum_pos exp(s/t) / sum_all exp(s/t)).
    `excluded[i, j]` drops key j for request i (the request itself, when the batch is among the keys)."""
    logits = (embeddings @ keys.T / temperature).masked_fill(excluded, float("-inf"))
    positive = (labels.unsqueeze(1) == key_labels.unsqueeze(0)) & ~excluded
    has_positive = positive.any(1)
    if not has_positive.any():
        return embeddings.sum() * 0.0
    losses = torch.logsumexp(logits, 1) - torch.logsumexp(logits.masked_fill(~positive, float("-inf")), 1)
    return losses[has_positive].mean()


def contrastive(problem: RoutingProblem, params: RouteParams, seed: int, progress: bool = False) -> tuple[Router, TrainingLog]:
    labelled = problem.train_labels != NO_LABEL
    features, labels = problem.train_features[labelled], problem.train_labels[labelled]
    if not len(labels):
        raise ValueError("contrastive routing needs labelled requests; none of the training notes has an expert")
    settings = params.contrastive
    torch.manual_seed(seed)
    router = Router.for_features(problem.experts, features, problem.vectoriser, "prototype",
                                 {"hidden_size": settings.hidden_size, "embedding_size": settings.embedding_size,
                                  "temperature": settings.temperature}, problem.settings)
    scorer: PrototypeScorer = router.scorer
    optimizer = torch.optim.Adam(router.parameters(), lr=params.learning_rate)
    experts = len(problem.experts)
    # The memory queue: the last `queue_size` embeddings of each expert's requests, oldest replaced first.
    queue = torch.zeros(experts, settings.queue_size, settings.embedding_size)
    queue_filled = torch.zeros(experts, dtype=torch.long)
    queue_next = torch.zeros(experts, dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    log, best = TrainingLog(), {}
    standardised = router.standardise(features.hidden)
    for epoch in tqdm(range(1, settings.epochs + 1), desc="router (contrastive)", unit="epoch", disable=not progress):
        router.train()
        total = 0.0
        for batch in _minibatches(len(labels), params.batch_size, generator):
            embeddings = scorer.embed(standardised[batch], features[batch])
            stored = [(queue[e, : queue_filled[e]], torch.full((int(queue_filled[e]),), e)) for e in range(experts)]
            # Keys: the queue, plus the batch itself (each request against the others, not itself).
            keys = torch.cat([s for s, _ in stored] + [embeddings])
            key_labels = torch.cat([l for _, l in stored] + [labels[batch]])
            excluded = torch.zeros(len(batch), len(keys), dtype=torch.bool)
            excluded[:, len(keys) - len(batch) :] = torch.eye(len(batch), dtype=torch.bool)
            loss = (contrastive_loss(embeddings, labels[batch], keys, key_labels, excluded, settings.temperature)
                    + router.penalty(params.hidden_l2, params.lexical_l2))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
            with torch.no_grad():
                for embedding, label in zip(embeddings.detach(), labels[batch]):
                    queue[label, queue_next[label]] = embedding
                    queue_next[label] = (queue_next[label] + 1) % settings.queue_size
                    queue_filled[label] = min(int(queue_filled[label]) + 1, settings.queue_size)
        log.loss_per_epoch.append(round(total / len(labels), 5))
        scorer.set_prototypes(standardised, features, labels)
        _keep_best(router, problem, log, epoch, best)
    router.load_state_dict(best["state"])
    return router.eval(), log


def sample_subsets(probabilities: torch.Tensor, k: int, samples: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`samples` draws of k distinct experts per row (Gumbel top-k), with each draw's log-probability
    under sequential sampling without replacement. Returns indices (rows, samples, k) and log-probs (rows, samples)."""
    log_p = probabilities.clamp_min(1e-12).log()
    gumbel = -torch.log(-torch.log(torch.rand((*log_p.shape[:-1], samples, log_p.shape[-1]), generator=generator).clamp(1e-12, 1 - 1e-7)))
    chosen = (log_p.detach().unsqueeze(-2) + gumbel).topk(k, dim=-1).indices
    chosen_log_p = log_p.unsqueeze(-2).expand(*chosen.shape[:-1], -1).gather(-1, chosen)
    chosen_p = chosen_log_p.exp()
    # log P(e1, ..., ek) = sum_j log p(e_j) - log(1 - sum_{i<j} p(e_i))
    taken_before = torch.cumsum(chosen_p, -1) - chosen_p
    log_prob = (chosen_log_p - torch.log1p(-taken_before.clamp(max=1 - 1e-6))).sum(-1)
    return chosen, log_prob


def reinforce(problem: RoutingProblem, params: RouteParams, seed: int, progress: bool = False) -> tuple[Router, TrainingLog]:
    if problem.subset_losses is None:
        raise ValueError("reinforce routing needs the target loss of requests under mixed experts (subset_losses)")
    settings = params.reinforce
    if settings.samples < 2:
        raise ValueError("route.reinforce.samples must be at least 2: the leave-one-out baseline needs other samples")
    rng = random.Random(seed)
    pool = list(range(len(problem.train_features)))
    pool = sorted(rng.sample(pool, min(settings.requests, len(pool))))
    features = problem.train_features[pool]
    torch.manual_seed(seed)
    router = Router.for_features(problem.experts, features, problem.vectoriser, "linear", settings=problem.settings)
    optimizer = torch.optim.Adam(router.parameters(), lr=settings.learning_rate)
    generator = torch.Generator().manual_seed(seed)
    k = min(settings.k, len(problem.experts))
    log = TrainingLog()
    mean_rewards = []
    for epoch in tqdm(range(1, settings.epochs + 1), desc="router (reinforce)", unit="epoch", disable=not progress):
        router.train()
        total, rewards_seen = 0.0, []
        for batch in _minibatches(len(pool), params.batch_size, generator):
            probabilities = router(features[batch]).softmax(-1)
            chosen, log_prob = sample_subsets(probabilities, k, settings.samples, generator)
            pairs = [(pool[int(i)], tuple(sorted(s.tolist()))) for i, draws in zip(batch, chosen) for s in draws]
            rewards = -problem.subset_losses(pairs).view(len(batch), settings.samples)
            # Leave-one-out baseline: each sample is compared with the mean of the request's other samples.
            baseline = (rewards.sum(1, keepdim=True) - rewards) / (settings.samples - 1)
            advantage = rewards - baseline
            advantage = advantage / (advantage.std() + 1e-6)
            entropy = -(probabilities * probabilities.clamp_min(1e-12).log()).sum(-1)
            loss = (-(advantage * log_prob).mean() - settings.entropy_weight * entropy.mean()
                    + router.penalty(params.hidden_l2, params.lexical_l2))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
            rewards_seen.append(rewards.mean().item())
        log.loss_per_epoch.append(round(total / len(pool), 5))
        mean_rewards.append(round(sum(rewards_seen) / len(rewards_seen), 5))
        # Labels only report here; the router learns from rewards alone and its last epoch is kept.
        log.val_accuracy_per_epoch.append(round(accuracy(router, problem.val_features, problem.val_labels), 4))
    log.best_epoch = settings.epochs
    log.extra = {"mean_reward_per_epoch": mean_rewards, "requests": len(pool)}
    return router.eval(), log


STRATEGIES = {"supervised": supervised, "contrastive": contrastive, "reinforce": reinforce}
