"""Distillation's parts with the tiny random model: the soft loss against a reference on full logits, the teacher's
top-k computed once and then read from its cache, each loss going down on a toy set, and the pruned student."""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from tasks.distil.losses import soft_target_loss
from tasks.distil.student import choose_layers, evenly_spaced, pruned_copy
from tasks.distil.train import GOLD, TEACHER, DistilExample, train_student
from tasks.finetune.examples import Request, tokenize_example
from tasks.finetune.inference import AdapterEngine, TopKCache, target_top_k
from tasks.params import DistilParams

NOTES = ["Chest pain on exertion, relieved by rest. Stress test ordered.",
         "Knee swelling after a fall; x-ray shows no fracture.",
         "Headache with photophobia for two days; no fever.",
         "Burning epigastric pain after meals; started a proton pump inhibitor."]
TARGETS = ["Stable angina.", "Knee sprain.", "Migraine.", "Gastritis."]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tasks.base_model import build_tiny_random, load_tokenizer
    from transformers import AutoModelForCausalLM

    directory = build_tiny_random(tmp_path_factory.mktemp("tiny") / "model", seed=3)
    return load_tokenizer(str(directory)), AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)


def _examples(tokenizer, targets=TARGETS):
    return [tokenize_example(tokenizer, Request(text=note), target, 64, 16) for note, target in zip(NOTES, targets)]


@pytest.mark.parametrize("divergence", ["kl", "jsd"])
def test_the_soft_loss_equals_the_full_divergence_when_k_covers_the_vocabulary(divergence):
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(6, 50, generator=generator) * 3, torch.randn(6, 50, generator=generator) * 3
    temperature = 2.0
    values, indices = teacher.topk(50, dim=-1)
    loss = soft_target_loss(student, values, indices, temperature, divergence)

    p, q = (teacher / temperature).softmax(-1), (student / temperature).softmax(-1)
    if divergence == "kl":
        reference = F.kl_div(q.log(), p.log(), log_target=True, reduction="none").sum(-1)
    else:
        m = (p + q) / 2
        reference = 0.5 * (p * (p / m).log()).sum(-1) + 0.5 * (q * (q / m).log()).sum(-1)
    torch.testing.assert_close(loss, reference * temperature**2, rtol=1e-4, atol=1e-5)
    # Fewer logits: a different (still non-negative) loss, not the full one.
    truncated = soft_target_loss(student, *teacher.topk(5, dim=-1), temperature, divergence)
    assert (truncated >= -1e-6).all() and not torch.allclose(truncated, loss)


def test_teacher_top_k_is_computed_once_then_read_from_the_cache(tiny, tmp_path):
    tokenizer, model = tiny
    engine = AdapterEngine(model, tokenizer, identity="tiny-teacher", precision="fp32")
    examples = _examples(tokenizer)
    requests = [Request(text=note) for note in NOTES]
    forward_passes = []
    hook = model.model.register_forward_hook(lambda *args: forward_passes.append(1))
    try:
        cache = TopKCache(tmp_path / "top_k.sqlite")
        first = target_top_k(engine, requests, examples, k=8, batch_size=2, cache=cache)
        computed = len(forward_passes)
        again = target_top_k(engine, requests, examples, k=8, batch_size=2, cache=TopKCache(tmp_path / "top_k.sqlite"))
    finally:
        hook.remove()
    assert computed == 2 and len(forward_passes) == computed  # two batches, then nothing recomputed
    assert cache.misses == len(examples)
    for example, stored, read in zip(examples, first, again):
        assert stored["indices"].shape == (example.supervised_tokens, 8) == read["values"].shape
        assert (stored["indices"] == read["indices"]).all() and (stored["values"] == read["values"]).all()
    # What was cached is the model's own top-k at each target token.
    with torch.no_grad():
        logits = model(torch.tensor([examples[0].input_ids])).logits[0]
    positions = [i - 1 for i, label in enumerate(examples[0].labels) if label != -100]
    expected = logits[positions].topk(8, dim=-1)
    assert (torch.from_numpy(first[0]["indices"].astype("int64")) == expected.indices).all()
    torch.testing.assert_close(torch.from_numpy(first[0]["values"]).float(), expected.values, atol=2e-2, rtol=1e-2)


@pytest.mark.parametrize("loss", ["hard", "soft", "supervised"])
def test_each_loss_decreases_on_a_toy_set(tiny, tmp_path, loss):
    tokenizer, model = tiny
    teacher = AdapterEngine(model, tokenizer, identity="tiny-teacher", precision="fp32")
    gold = _examples(tokenizer)
    top_k = target_top_k(teacher, [Request(text=n) for n in NOTES], gold, k=16, cache=TopKCache(tmp_path / "c.sqlite"))
    train = [DistilExample(e, GOLD, t) for e, t in zip(gold, top_k)]
    train += [DistilExample(e, TEACHER) for e in _examples(tokenizer, ["Angina, stable.", "Sprain.", "Migraine.", "Gastritis."])]
    student = pruned_copy(model, [1])
    weights = {"hard": 0.0, "soft": 0.0, "supervised": 0.0, loss: 1.0}
    settings = DistilParams(max_steps=24, batch_size=8, learning_rate=3e-3, warmup_steps=0, eval_every=0, train_embeddings=True)
    report = train_student(loss, student, train, [], weights, settings, tokenizer.pad_token_id, seed=0,
                           device=torch.device("cpu"), precision="fp32", progress=False)
    curve = report.loss_per_step[loss]
    assert len(curve) == 24 and curve[-1] < 0.8 * curve[0], curve
    assert report.examples == ({GOLD: 4, TEACHER: 0} if loss != "hard" else {GOLD: 0, TEACHER: 4})


def test_a_student_with_every_layer_answers_as_its_base_and_a_pruned_one_generates_with_the_kv_cache(tiny):
    tokenizer, model = tiny
    ids = torch.tensor([_examples(tokenizer)[0].input_ids])
    with torch.no_grad():
        torch.testing.assert_close(pruned_copy(model, [0, 1])(ids).logits, model(ids).logits)
        student = pruned_copy(model, [1])
        assert student.config.num_hidden_layers == 1 and len(model.model.layers) == 2  # the base is left whole
        cached = student.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        uncached = student.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id, use_cache=False)
    assert torch.equal(cached, uncached)
    assert not {id(p) for p in student.parameters()} & {id(p) for p in model.parameters()}  # a copy, not a view


def test_layers_are_kept_by_count_share_or_index_with_the_first_and_last_always_kept():
    assert evenly_spaced(30, 4) == [0, 10, 19, 29]
    assert choose_layers(30, 0.5, "even") == evenly_spaced(30, 15)
    influence = [0.9, 0.1, 0.5, 0.05, 0.7, 0.2]
    assert choose_layers(6, 4, "influence", influence) == [0, 2, 4, 5]  # the two of least influence go
    assert choose_layers(6, [3, 1], "influence", influence) == [1, 3]
    for bad in (0, 7, [6], [1, 1]):
        with pytest.raises(ValueError, match="keep_layers"):
            choose_layers(6, bad, "even")
