"""Evaluation on the tiny random model: signals read from real logits, metrics, flags and the review sample."""

from __future__ import annotations

import math

import pytest
import torch
from peft import PeftModel

from tasks.evaluate.evaluation import (HeldOutItem, ScoredItem, flag_outputs, in_scope, perturbed_item, review_sample,
                                       safety_separation, score_items, summarise)
from tasks.evaluate.metrics import expected_calibration_error, perplexity, separation_auroc
from tasks.finetune.inference import AdapterEngine, scored_answers, scored_generate, target_token_losses
from tasks.base_model import load_base, prepare_base_model
from tasks.finetune.examples import Request, prompt_ids, tokenize_example
from tasks.finetune.precision import resolve_precision
from tasks.finetune.train import add_lora, evaluate_loss
from tasks.params import FinetuneParams, LoraParams, load_params

from .conftest import PROJECT

NOTE = ("Patient reports chest pain on exertion. Denies fever. History of hypertension treated with lisinopril. "
        "Assessment: unstable angina. Plan: heparin and cardiac catheterization.")


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-evaluate")
    prepare_base_model("tiny-random", root)
    tokenizer, model = load_base("tiny-random", root)
    return AdapterEngine(model, tokenizer)


def test_entropy_and_energy_of_a_generated_token_are_those_of_its_logits(engine):
    request = Request(text=NOTE)
    [generated] = scored_generate(engine, [request], 64, 1)
    ids = torch.tensor([prompt_ids(engine.tokenizer, request, 64)])
    with torch.no_grad():
        logits = engine.model(input_ids=ids).logits[0, -1].double()
    probabilities = logits.softmax(-1)
    assert generated.token_entropy == pytest.approx(float(-(probabilities * probabilities.log()).sum()), rel=1e-4)
    assert generated.energy == pytest.approx(float(-torch.logsumexp(logits, -1)), rel=1e-4)
    assert generated.text == engine.tokenizer.decode([int(logits.argmax())], skip_special_tokens=True).strip()


def test_batched_scores_match_one_request_at_a_time(engine):
    requests = [Request(text=NOTE), Request(text="Short note: knee pain after a fall."),
                Request(question="Does aspirin reduce stroke?", context="Aspirin lowered stroke in a trial of 300 adults.")]
    together = scored_generate(engine, requests, 64, 4, batch_size=3)
    alone = [scored_generate(engine, [r], 64, 4)[0] for r in requests]
    for a, b in zip(together, alone):
        assert a.text == b.text and a.token_entropy == pytest.approx(b.token_entropy, rel=1e-3)
    [answer] = scored_answers(engine, requests[2:], 64)
    assert set(answer.probabilities) == {"yes", "no", "maybe"} and sum(answer.probabilities.values()) == pytest.approx(1)
    assert 0 <= answer.answer_entropy <= math.log(3) + 1e-9


def test_target_losses_give_the_trainers_validation_loss(engine):
    requests = [Request(text=NOTE), Request(text="Knee pain after a fall, x-ray negative.")]
    examples = [tokenize_example(engine.tokenizer, r, "A short summary of the note.", 64, 16) for r in requests]
    losses = target_token_losses(engine, requests, examples, batch_size=2)
    cpu = torch.device("cpu")
    expected = evaluate_loss(engine.model, examples, 2, engine.tokenizer.pad_token_id, cpu, resolve_precision("auto", cpu))
    assert perplexity([l for l, _ in losses], [n for _, n in losses]) == pytest.approx(math.exp(expected), rel=1e-4)


def test_an_adapter_engine_scores_the_adapter_not_the_base(engine, tmp_path):
    adapted = add_lora(engine.model, FinetuneParams(lora=LoraParams(r=4, alpha=8, dropout=0.0)))
    with torch.no_grad():
        for name, parameter in adapted.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    adapted.save_pretrained(tmp_path / "adapter")
    adapted.unload()
    request = [Request(text=NOTE)]
    base_energy = scored_generate(engine, request, 64, 1)[0].energy
    expert = AdapterEngine(PeftModel.from_pretrained(engine.model, tmp_path / "adapter").eval(), engine.tokenizer)
    assert scored_generate(expert, request, 64, 1)[0].energy != pytest.approx(base_energy)
    expert.model.unload()


def test_calibration_error_and_auroc_on_known_values():
    assert expected_calibration_error([0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9], [True] * 9 + [False]) == pytest.approx(0.0)
    # always 90% sure and right half the time: 0.4 off
    assert expected_calibration_error([0.9] * 4, [True, False, True, False]) == pytest.approx(0.4)
    assert separation_auroc([0.9, 0.8, 0.1, 0.2], [True, True, False, False]) == 1.0
    assert separation_auroc([0.1, 0.2, 0.9, 0.8], [True, True, False, False]) == 0.0
    assert separation_auroc([0.5, 0.5], [False, False]) is None


def items_and_scores():
    items = [HeldOutItem("n-1", "cardio", Request(text=NOTE), "Unstable angina treated with heparin."),
             HeldOutItem("n-2", "ortho", Request(text="Knee pain after a fall. No fracture."), "Knee sprain."),
             HeldOutItem("q-1", "pubmedqa", Request(question="Does aspirin reduce stroke?", context="Aspirin lowered stroke."),
                         "yes. It did."),
             HeldOutItem("q-2", "pubmedqa", Request(question="Does heparin reduce pain?", context="Heparin did not."),
                         "no. It did not.")]
    scored = [ScoredItem("unstable angina treated with heparin", 1.0, -5.0, 0.01, 2.0, 4, []),
              ScoredItem("knee sprain started on warfarin", 3.0, -1.0, 0.03, 4.0, 4, ["unsupported drug: warfarin"]),
              ScoredItem("yes", 0.2, -9.0, 0.02, 1.0, 2, [], answer="yes", confidence=0.9, answer_entropy=0.3,
                         answer_margin=0.85),
              ScoredItem("yes", 2.0, -2.0, 0.02, 3.0, 2, [], answer="yes", confidence=0.6, answer_entropy=1.0,
                         answer_margin=0.25)]
    return items, scored


def test_summary_metrics_per_kind_of_request():
    items, scored = items_and_scores()
    metrics = summarise(items, scored)
    assert metrics["notes"] == 2 and metrics["questions"] == 2
    assert metrics["accuracy"] == 0.5 and metrics["critical_error_rate"] == 0.25
    assert metrics["perplexity"] == pytest.approx(math.exp(10 / 12), rel=1e-4)
    assert 0 < metrics["rouge_l"] < 1 and metrics["latency_ms"] == pytest.approx(20.0)
    assert [in_scope(i, "multitask") for i in items] == [True, True, False, False]
    assert [in_scope(i, "pubmedqa") for i in items] == [False, False, True, True]


def test_flags_and_the_review_sample_put_critical_errors_and_unsure_outputs_first():
    items, scored = items_and_scores()
    flag_outputs(items, scored, share=0.5)
    assert scored[1].flags[0] == "critical error, unsupported drug: warfarin"
    assert any(f.startswith("high entropy") for f in scored[3].flags)  # the unsure wrong answer
    assert not scored[0].flags
    sample = review_sample(items, scored, count=3, seed=1)
    flagged = sum(bool(s.flags) for s in scored)
    assert sample[0] == (1, "flagged") and [how for _, how in sample].count("flagged") == min(flagged, 3)
    assert len(sample) == 3 and len({k for k, _ in sample}) == 3
    safety = safety_separation(items, scored)
    assert safety["wrong"] == 1 and safety["auroc_token_entropy"] == 1.0 and safety["auroc_answer_entropy"] == 1.0
    assert safety["auroc_negative_answer_margin"] == 1.0  # the wrong answer had the narrower margin


def test_perturbations_keep_the_item_and_skip_negation_flips_of_questions():
    items, _ = items_and_scores()
    upper = perturbed_item(items[0], "upper_case", 1)
    assert upper.request.text == NOTE.upper() and upper.target == items[0].target
    assert perturbed_item(items[2], "negation_flip", 1) is None
    assert perturbed_item(items[2], "upper_case", 1).request.question == items[2].request.question.upper()


def test_score_items_scores_notes_and_questions_with_their_own_budgets(engine, tmp_path):
    params = load_params(PROJECT, {"finetune": {"max_source_tokens": 64, "max_target_tokens": 6, "task_experts": {
        "pubmedqa": {"path": "q.json", "overrides": {"max_source_tokens": 80, "max_target_tokens": 3}}}}})
    items, _ = items_and_scores()
    scored = score_items(engine, items, params)
    assert all(s.tokens > 0 and s.loss > 0 for s in scored)
    assert scored[0].answer is None and scored[2].answer in {"yes", "no", "maybe"}
    assert len(engine.tokenizer(scored[2].text)["input_ids"]) <= 4


def test_a_candidate_that_cannot_be_loaded_is_kept_out_with_the_reason(tmp_path):
    """A registered version whose model is gone (or was logged by code that no longer exists) does not stop the
    evaluation of the others: it is listed as skipped, with why, and the gate keeps it out."""
    from tasks.evaluate.stage import CandidateRef, base_engine_factory, evaluate_candidates, load_registered_engine
    from tasks.promote.gate import decide

    params = load_params(PROJECT)
    params.base_model = "tiny-random"
    prepare_base_model("tiny-random", tmp_path)
    items = [HeldOutItem("n-1", "cardiopulmonary", Request(text="Chest pain on exertion."), "Angina.")]
    gone = tmp_path / "model-that-is-gone"
    evaluation, results = evaluate_candidates(params, items, [CandidateRef("medlora-router", "1", "all")],
                                              base_engine_factory(params, tmp_path), champions={},
                                              load_engine=lambda uri: load_registered_engine(str(gone)), progress=False)
    (candidate,) = evaluation["candidates"]
    assert candidate["skipped"].startswith(f"{gone} could not be loaded") and not results
    assert not decide(candidate, None, params.promote, None).promote
