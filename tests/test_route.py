"""Routing on the tiny random model: exact mixing, each strategy's training step, composition."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from tasks.base_model import load_base, prepare_base_model
from tasks.finetune.examples import Request, tokenize_example
from tasks.finetune.train import add_lora
from tasks.params import FinetuneParams, LoraParams, RouteParams
from tasks.route.compose import compose
from tasks.route.features import LexicalVectoriser, featurise
from tasks.route.losses import MixtureLoss
from tasks.route.mixing import CombinationCache, ExpertMixture, load_expert_factors, merged_adapter_state, save_adapter
from tasks.route.router import Router, mixing_weights
from tasks.route.strategies import STRATEGIES, RoutingProblem, accuracy, sample_subsets

EXPERTS = ["cardio", "ortho", "neuro"]
TOPICS = {"cardio": "heart chest murmur ejection fraction coronary stent",
          "ortho": "knee fracture femur cast ligament bone",
          "neuro": "seizure headache aphasia stroke nerve spine"}


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny-route")
    prepare_base_model("tiny-random", root)
    return root


@pytest.fixture(scope="module")
def adapter_dirs(tiny_root) -> dict[str, Path]:
    """Three LoRA adapters with random (non-zero) factors, ranks 4, 4 and 2, saved in PEFT format."""
    dirs = {}
    for index, (name, rank) in enumerate(zip(EXPERTS, [4, 4, 2])):
        torch.manual_seed(index)
        _, base = load_base("tiny-random", tiny_root)
        model = add_lora(base, FinetuneParams(lora=LoraParams(r=rank, alpha=2 * rank, dropout=0.0)))
        for module_name, parameter in model.named_parameters():
            if "lora_B" in module_name:
                torch.nn.init.normal_(parameter, std=0.05)
        model.save_pretrained(tiny_root / "adapters" / name)
        dirs[name] = tiny_root / "adapters" / name
    return dirs


def _ids(tokenizer, texts: list[str]) -> torch.Tensor:
    return torch.tensor([tokenizer(t, add_special_tokens=False)["input_ids"][:12] for t in texts])


def test_a_mixed_layer_adds_exactly_the_weighted_sum_of_expert_updates(tiny_root, adapter_dirs):
    _, base = load_base("tiny-random", tiny_root)
    experts = [load_expert_factors(adapter_dirs[e], e) for e in EXPERTS]
    mixture = ExpertMixture(base, experts)
    path = "model.layers.0.self_attn.q_proj"
    layer = base.get_submodule(path)
    x = torch.randn(2, 5, layer.base.in_features)
    weights = torch.tensor([[0.7, 0.2, 0.1], [-0.5, 0.0, 1.3]])
    with mixture.mixed(weights, 2):
        mixed = layer(x)
    for row in range(2):
        expected = layer.base(x[row])
        for w, expert in zip(weights[row], experts):
            a, b = expert.factors[path]
            expected = expected + w * expert.scaling * (x[row] @ a.T @ b.T)
        assert torch.allclose(mixed[row], expected, atol=1e-5)
    # Averaging A and B separately (PEFT's `linear`) is not the mix: it carries cross terms B_i A_j.
    a_avg = sum(w * e.scaling * e.factors[path][0] for w, e in zip(weights[0][:2], experts[:2]))
    b_avg = sum(w * e.factors[path][1] for w, e in zip(weights[0][:2], experts[:2]))
    with mixture.mixed(torch.tensor([0.7, 0.2, 0.0]), 1):
        exact = layer(x[:1])
    assert not torch.allclose(exact[0], layer.base(x[0]) + x[0] @ a_avg.T @ b_avg.T, atol=1e-4)


def test_mixture_logits_equal_peft_cat_combination_and_our_merged_adapter(tiny_root, adapter_dirs):
    tokenizer, base = load_base("tiny-random", tiny_root)
    ids = _ids(tokenizer, ["the patient has chest pain and a murmur today", "knee fracture after a fall from a ladder ok"])
    weights = [0.6, 0.3, -0.4]
    peft_model = PeftModel.from_pretrained(base, adapter_dirs[EXPERTS[0]], adapter_name=EXPERTS[0])
    for name in EXPERTS[1:]:
        peft_model.load_adapter(adapter_dirs[name], adapter_name=name)
    peft_model.add_weighted_adapter(EXPERTS, weights, "mix", combination_type="cat")
    peft_model.set_adapter("mix")
    with torch.no_grad():
        peft_logits = peft_model(input_ids=ids).logits

    _, fresh = load_base("tiny-random", tiny_root)
    mixture = ExpertMixture.from_adapter_dirs(fresh, adapter_dirs)
    with torch.no_grad(), mixture.mixed(weights, len(ids)):
        ours = mixture.model(input_ids=ids).logits
    assert torch.allclose(ours, peft_logits, atol=1e-5)

    # Rows of one batch can mix different combinations: each equals that row run on its own.
    per_row = torch.tensor([weights, [0.0, 1.0, 0.0]])
    with torch.no_grad(), mixture.mixed(per_row, 2):
        batched = mixture.model(input_ids=ids).logits
    with torch.no_grad(), mixture.mixed(per_row[1:], 1):
        alone = mixture.model(input_ids=ids[1:]).logits
    assert torch.allclose(batched[:1], ours[:1], atol=1e-5) and torch.allclose(batched[1:], alone, atol=1e-5)

    # The merged `cat` adapter we write loads in PEFT and gives the same logits.
    state, config = merged_adapter_state(mixture.experts, weights)
    merged_dir = save_adapter(state, config, tiny_root / "merged")
    _, another = load_base("tiny-random", tiny_root)
    with torch.no_grad():
        merged_logits = PeftModel.from_pretrained(another, merged_dir)(input_ids=ids).logits
    assert torch.allclose(merged_logits, peft_logits, atol=1e-5)


def test_combination_cache_merges_each_rounded_combination_once(adapter_dirs):
    cache = CombinationCache([load_expert_factors(adapter_dirs[e], e) for e in EXPERTS], size=2, grid=0.05)
    first = cache.merged([0.61, 0.39, 0.0])
    assert cache.merged([0.6, 0.4, 0.0]) is first and (cache.hits, cache.misses) == (1, 1)
    cache.merged([0.0, 1.0, 0.0])
    cache.merged([1.0, 0.0, 0.0])
    assert cache.key([0.61, 0.39, 0.0]) not in cache._merged  # least recently used, dropped
    with pytest.raises(ValueError, match="base model"):
        cache.merged([0.01, 0.0, 0.0])


def test_mixing_weights_keep_top_k_renormalised_and_fall_back_when_unsure():
    probabilities = torch.tensor([[0.6, 0.3, 0.1], [0.4, 0.35, 0.25]])
    weights = mixing_weights(probabilities, top_k=2, min_confidence=0.5)
    assert torch.allclose(weights[0], torch.tensor([2 / 3, 1 / 3, 0.0]))
    assert weights[1].sum() == 0  # below min_confidence: the base model


def _topic_requests(count: int, seed: int) -> tuple[list[Request], list[int]]:
    generator = torch.Generator().manual_seed(seed)
    requests, labels = [], []
    filler = "the patient was seen today and reports feeling well overall".split()
    for index in range(count):
        label = index % len(EXPERTS)
        words = TOPICS[EXPERTS[label]].split()
        picks = [words[int(i)] for i in torch.randint(len(words), (6,), generator=generator)]
        picks += [filler[int(i)] for i in torch.randint(len(filler), (6,), generator=generator)]
        requests.append(Request(text=" ".join(picks)))
        labels.append(label)
    return requests, labels


@pytest.fixture(scope="module")
def routing_problem(tiny_root) -> RoutingProblem:
    tokenizer, base = load_base("tiny-random", tiny_root)
    train, train_labels = _topic_requests(48, 0)
    val, val_labels = _topic_requests(24, 1)
    vectoriser = LexicalVectoriser(512).fit(train)
    settings = {"layer": 0, "note_tokens": 64, "question_tokens": 64, "top_k": 2, "min_confidence": 0.0}
    return RoutingProblem(EXPERTS, featurise(base, tokenizer, train, vectoriser, settings), torch.tensor(train_labels),
                          featurise(base, tokenizer, val, vectoriser, settings), torch.tensor(val_labels), vectoriser, settings)


def test_each_layer_read_in_one_pass_is_what_the_first_layers_alone_give(tiny_root):
    from tasks.finetune.inference import padded
    from tasks.finetune.examples import prompt_ids
    from tasks.route.features import decoder_of, request_features

    tokenizer, base = load_base("tiny-random", tiny_root)
    requests = [Request(text=t) for t in ("Knee fracture after a fall.", "Chest pain on exertion, relieved by rest today.")]
    together = request_features(base, tokenizer, requests, [1, 0], 64, 64, precision="fp32")
    decoder = decoder_of(base)
    all_layers = decoder.layers
    for layer, count in ((1, 1), (0, len(all_layers))):
        decoder.layers = all_layers[:count]
        try:
            for row, request in enumerate(requests):
                batch = padded([prompt_ids(tokenizer, request, 64)], tokenizer.pad_token_id, torch.device("cpu"), side="right")
                with torch.no_grad():
                    alone = decoder(**batch).last_hidden_state.float().mean(1)[0]
                assert torch.allclose(together[layer][row], alone, atol=1e-5)
        finally:
            decoder.layers = all_layers


def test_candidate_layers_are_ordered_by_cost_and_checked_against_the_model():
    from tasks.params import load_params
    from tasks.route.stage import layer_candidates

    params = load_params(Path(__file__).resolve().parents[1])
    params.route = RouteParams(layer=[0, 8, 2, 99])
    assert layer_candidates(params, 30) == [2, 8, 0]   # 0 (the last) costs all 30 layers; 99 is deeper than the model
    params.route = RouteParams(layer=[8])
    with pytest.raises(ValueError, match="decoder layers 1 to 2"):
        layer_candidates(params, 2)


def test_lexical_vectoriser_is_stable_and_unit_length():
    requests = [Request(text="Knee fracture, knee pain."), Request(text="chest pain")]
    first = LexicalVectoriser(64).fit(requests).transform(requests)
    again = LexicalVectoriser(64).fit(requests).transform(requests)
    for (ids, weights), (ids2, weights2) in zip(first, again):
        assert torch.equal(ids, ids2) and torch.allclose(weights, weights2)
        assert math.isclose(float(weights.norm()), 1.0, rel_tol=1e-6)


@pytest.mark.parametrize("strategy", ["supervised", "contrastive"])
def test_labelled_strategies_learn_to_route_topics(routing_problem, strategy):
    params = RouteParams(epochs=30, batch_size=16, learning_rate=0.01, hidden_l2=0.01, lexical_l2=1e-4,
                         contrastive={"queue_size": 8, "hidden_size": 16, "embedding_size": 8, "epochs": 30})
    untrained = Router.for_features(EXPERTS, routing_problem.train_features, routing_problem.vectoriser, "linear")
    router, log = STRATEGIES[strategy](routing_problem, params, seed=3)
    assert accuracy(router, routing_problem.val_features, routing_problem.val_labels) >= 0.9
    assert accuracy(untrained, routing_problem.val_features, routing_problem.val_labels) < 0.9
    assert log.loss_per_epoch[-1] < log.loss_per_epoch[0]


def test_contrastive_prototypes_are_unit_vectors(routing_problem):
    params = RouteParams(batch_size=16, contrastive={"queue_size": 4, "hidden_size": 16, "embedding_size": 8, "epochs": 3})
    router, _ = STRATEGIES["contrastive"](routing_problem, params, seed=0)
    assert torch.allclose(router.scorer.prototypes.norm(dim=-1), torch.ones(len(EXPERTS)), atol=1e-5)


def test_router_round_trips_through_disk(routing_problem, tmp_path):
    router, _ = STRATEGIES["supervised"](routing_problem, RouteParams(epochs=10), seed=0)
    loaded = Router.load(router.save(tmp_path / "router"))
    assert torch.allclose(loaded.probabilities(routing_problem.val_features), router.probabilities(routing_problem.val_features))
    assert loaded.settings == routing_problem.settings


def test_subset_sampling_gives_distinct_experts_and_exact_log_probabilities():
    probabilities = torch.tensor([[0.5, 0.3, 0.2]])
    chosen, log_prob = sample_subsets(probabilities, k=2, samples=64, generator=torch.Generator().manual_seed(0))
    assert all(len(set(draw.tolist())) == 2 for draw in chosen[0])
    first, second = chosen[0, 0].tolist()
    p = probabilities[0]
    assert math.isclose(float(log_prob[0, 0]), math.log(p[first] * p[second] / (1 - p[first])), rel_tol=1e-5)


def test_reinforce_moves_the_router_towards_the_expert_with_the_lowest_loss(routing_problem):
    # Expert "ortho" has the lowest loss for every request here, whatever its label says.
    table = torch.tensor([1.0, 0.2, 1.5])
    problem = RoutingProblem(**{**routing_problem.__dict__,
                                "subset_losses": lambda pairs: torch.stack([table[list(s)].mean() for _, s in pairs])})
    params = RouteParams(batch_size=16, reinforce={"k": 1, "samples": 4, "requests": 48, "epochs": 15, "learning_rate": 0.05})
    router, log = STRATEGIES["reinforce"](problem, params, seed=0)
    share = router.probabilities(routing_problem.val_features).mean(0)
    assert share[1] > 0.8
    assert log.extra["mean_reward_per_epoch"][-1] > log.extra["mean_reward_per_epoch"][0]


def test_reinforce_scores_rewards_under_real_mixed_adapters_and_caches_them(tiny_root, adapter_dirs, routing_problem):
    tokenizer, base = load_base("tiny-random", tiny_root)
    mixture = ExpertMixture.from_adapter_dirs(base, adapter_dirs)
    train_requests, _ = _topic_requests(48, 0)
    examples = [tokenize_example(tokenizer, r, "summary of the visit", 64, 8) for r in train_requests]
    scorer = MixtureLoss(mixture, examples, tokenizer.pad_token_id, batch_size=8)
    problem = RoutingProblem(**{**routing_problem.__dict__, "subset_losses": scorer.subset_losses})
    params = RouteParams(batch_size=8, reinforce={"k": 2, "samples": 3, "requests": 8, "epochs": 2})
    router, log = STRATEGIES["reinforce"](problem, params, seed=0)
    assert all(math.isfinite(r) for r in log.extra["mean_reward_per_epoch"])
    # 8 requests x 3 pairs of 3 experts: at most 24 distinct forward rows however many draws there were.
    assert 0 < scorer.forward_rows <= 24 and len(scorer._subset_losses) == scorer.forward_rows
    # A cached subset loss is the loss of an equal mix.
    (index, subset), loss = next(iter(scorer._subset_losses.items()))
    weights = torch.zeros(3)
    weights[list(subset)] = 1 / len(subset)
    assert math.isclose(float(scorer.losses([index], weights)[0]), loss, rel_tol=1e-4)


def test_composition_finds_a_mix_better_than_where_it_started(tiny_root, adapter_dirs):
    tokenizer, base = load_base("tiny-random", tiny_root)
    mixture = ExpertMixture.from_adapter_dirs(base, adapter_dirs)
    requests, _ = _topic_requests(5, 2)
    examples = [tokenize_example(tokenizer, r, "knee fracture", 64, 8) for r in requests]
    scorer = MixtureLoss(mixture, examples, tokenizer.pad_token_id)
    every = list(range(len(examples)))
    composition = compose("new", EXPERTS, lambda w: scorer.mean_loss(every, torch.tensor(w, dtype=torch.float)),
                          budget=20, l1=0.0, bound=1.5)
    assert composition.example_loss < composition.start_loss
    assert composition.evaluations <= 20 and all(abs(w) <= 1.5 for w in composition.weights)
    assert math.isclose(scorer.mean_loss(every, torch.tensor(composition.weights)), composition.example_loss, rel_tol=1e-4)
