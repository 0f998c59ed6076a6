"""The one inference path on the tiny random model: the cache's identities and re-use, one precision policy."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel

from tasks.base_model import load_base, prepare_base_model
from tasks.finetune.examples import Request, tokenize_example
from tasks.finetune.inference import (AdapterEngine, InferenceCache, file_fingerprint, mixture_identity, respond, scored_answers,
                                      scored_generate, target_token_losses, weights_fingerprint)
from tasks.finetune.precision import resolve_precision
from tasks.finetune.train import add_lora
from tasks.params import FinetuneParams, LoraParams
from tasks.route.mixing import ADAPTER_WEIGHTS, ExpertMixture

NOTES = ["Chest pain on exertion, relieved by rest. Plan: stress test.", "Knee pain after a fall; x-ray negative.",
         "Abdominal pain and nausea for two days."]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-inference")
    prepare_base_model("tiny-random", root)
    tokenizer, model = load_base("tiny-random", root)
    adapted = add_lora(model, FinetuneParams(lora=LoraParams(r=4, alpha=8, dropout=0.0)))
    with torch.no_grad():
        for name, parameter in adapted.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    adapted.save_pretrained(root / "adapter")
    return root, tokenizer


def test_an_expert_alone_and_the_mixture_weighting_it_one_have_one_identity(tiny):
    root, tokenizer = tiny
    _, plain = load_base("tiny-random", root)
    base = weights_fingerprint(plain)
    _, for_peft = load_base("tiny-random", root)
    expert = PeftModel.from_pretrained(for_peft, root / "adapter")
    adapter = file_fingerprint(root / "adapter" / ADAPTER_WEIGHTS)
    alone = mixture_identity(weights_fingerprint(expert), [(adapter, 1.0)])
    _, for_mixture = load_base("tiny-random", root)
    mixture = ExpertMixture.from_adapter_dirs(for_mixture, {"expert": root / "adapter"})
    assert mixture.identities(torch.tensor([[1.0], [0.0], [0.5]])) == [alone, mixture_identity(base, []), mixture_identity(base, [(adapter, 0.5)])]
    assert alone != mixture_identity(base, [])


def test_cached_results_are_reused_and_equal_to_computing_them(tiny, tmp_path):
    root, tokenizer = tiny
    _, model = load_base("tiny-random", root)
    requests = [Request(text=n) for n in NOTES]
    engine = AdapterEngine(model, tokenizer, mixture_identity(weights_fingerprint(model), []))
    cache = InferenceCache(tmp_path / "cache.sqlite")
    computed = scored_generate(engine, requests, 64, 8, batch_size=2, cache=cache)
    assert (cache.hits, cache.misses) == (0, 3)
    reused = scored_generate(engine, requests[::-1], 64, 8, batch_size=3, cache=InferenceCache(tmp_path / "cache.sqlite"))
    assert [g.text for g in reused] == [g.text for g in computed[::-1]]
    assert [g.energy for g in reused] == [g.energy for g in computed[::-1]]
    examples = [tokenize_example(tokenizer, r, "A short summary.", 64, 8) for r in requests]
    losses = target_token_losses(engine, requests, examples, cache=cache)
    assert target_token_losses(engine, requests, examples, cache=cache) == losses and cache.hits == 3
    # Other weights, another budget or another precision is other work.
    other = AdapterEngine(model, tokenizer, mixture_identity(weights_fingerprint(model), [("0" * 16, 1.0)]))
    misses = cache.misses
    scored_generate(other, requests[:1], 64, 8, cache=cache)
    scored_generate(engine, requests[:1], 64, 4, cache=cache)
    scored_generate(AdapterEngine(model, tokenizer, engine.identity, "fp32" if resolve_precision("auto", torch.device("cpu")) == "bf16"
                                  else "bf16"), requests[:1], 64, 8, cache=cache)
    assert cache.misses == misses + 3


def test_serving_answers_with_the_precision_evaluation_scored(tiny):
    root, tokenizer = tiny
    _, model = load_base("tiny-random", root)
    requests = [Request(text=n) for n in NOTES]
    for precision in ("fp32", "bf16"):
        evaluated = [g.text for g in scored_generate(AdapterEngine(model, tokenizer, precision=precision), requests, 64, 8)]
        served = [r["prediction"] for r in respond(model, tokenizer, requests, 64, 8, precision=precision)]
        assert served == evaluated


def test_a_questions_decision_read_in_the_generation_pass_is_that_of_a_forward_pass(tiny):
    root, tokenizer = tiny
    _, model = load_base("tiny-random", root)
    engine = AdapterEngine(model, tokenizer, precision="fp32")
    questions = [Request(question="Does aspirin lower the risk of stroke?", context="A trial of 2,000 adults. " * k)
                 for k in (1, 3, 6)]
    generated = scored_generate(engine, questions, 96, 4, batch_size=3)
    for from_generation, alone in zip(generated, scored_answers(engine, questions, 96, batch_size=3)):
        for answer in alone.probabilities:
            assert from_generation.decision.probabilities[answer] == pytest.approx(alone.probabilities[answer], abs=1e-4)
        assert from_generation.decision.energy == pytest.approx(alone.energy, abs=1e-3)


def test_the_weights_fingerprint_does_not_depend_on_the_thread_count():
    """A serving machine with other cores than the training one must see the same fingerprint."""
    import torch

    from tasks.finetune.inference import weights_fingerprint

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 4096), torch.nn.Linear(4096, 256))
    threads = torch.get_num_threads()
    fingerprints = []
    try:
        for count in (1, 2, 4):
            torch.set_num_threads(count)
            model._medlora_fingerprint = None
            fingerprints.append(weights_fingerprint(model))
    finally:
        torch.set_num_threads(threads)
    assert len(set(fingerprints)) == 1
    with torch.no_grad():
        model[0].weight[0, 0] += 1e-3
    model._medlora_fingerprint = None
    assert weights_fingerprint(model) != fingerprints[0]
