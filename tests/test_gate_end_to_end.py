"""The promotion gate end to end, with ROUGE-L and critical errors that measure something.

The tiny random model writes noise, so presets/tiny.yaml gates on perplexity alone. Here two LoRA experts
are trained on it to reproduce one-line summaries of six notes (memorised: the point is the gate's plumbing,
fed with metrics that mean something): the multi-task expert on the right summaries, the cardiopulmonary
expert on summaries whose negation is flipped ("Denies chest pain." -> "Chest pain; ..."). Both are
registered in a real MLflow registry, scored beside the base model by the evaluate stage's code, every
output of theirs in the review queue is approved (so that only metrics decide), and the gate decides.
The flipped summaries differ from the right ones by one word, so ROUGE-L alone would let them in; the
critical error rate keeps them out."""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from tasks.base_model import load_base, prepare_base_model, resolve_base_model
from tasks.drift.summary import NO_REFERENCE, DriftSummary
from tasks.evaluate.clinical_terms import critical_errors
from tasks.evaluate.evaluation import held_out_items
from tasks.evaluate.stage import EVALUATION_DIR, EVALUATION_FILE, base_engine_factory, candidate_refs, evaluate_candidates, queue_items
from tasks.finetune.examples import Request
from tasks.finetune.train import train_expert_adapter
from tasks.params import MULTITASK_EXPERT, load_params
from tasks.promote.gate import CHAMPION, alias_version, promote
from tasks.register.registry import register_expert, registered_name
from tasks.review.project import open_store
from tasks.tracking import configure_tracking

from .conftest import PROJECT

GROUP = "cardiopulmonary"  # every note's group: the multi-task and the cardiopulmonary expert answer the same six
# (note, right summary, summary with the note's negation flipped)
NOTES = [
    ("Denies chest pain. Hypertension treated with lisinopril.",
     "No chest pain; hypertension on lisinopril.", "Chest pain; hypertension on lisinopril."),
    ("No fever. Cough for two days, treated with albuterol.",
     "No fever; cough on albuterol.", "Fever; cough on albuterol."),
    ("No shortness of breath. Atrial fibrillation on warfarin.",
     "Atrial fibrillation on warfarin; no shortness of breath.", "Atrial fibrillation on warfarin; shortness of breath."),
    ("Negative for pneumonia. Asthma treated with albuterol.",
     "Asthma on albuterol; no pneumonia.", "Asthma on albuterol; pneumonia."),
    ("Denies palpitations. Heart failure treated with furosemide.",
     "Heart failure on furosemide; no palpitations.", "Heart failure on furosemide; palpitations."),
    ("No wheezing. COPD treated with tiotropium.",
     "COPD on tiotropium; no wheezing.", "COPD on tiotropium; wheezing."),
]
MAX_CRITICAL_ERROR_RATE = 0.2
ROUGE_GAIN = 0.5  # over the base model's noise

OVERRIDES = {
    "seed": 13,
    "base_model": "tiny-random",
    # 120 steps memorise the six summaries in ~8 s on a CPU; LoRA on the MLP as well as attention, because attention
    # alone had not learnt them after 100 steps. LoRA on lm_head too: the tiny model's <|im_end|> is also its padding
    # token, whose embedding row Llama initialises to zeros, and the head is tied to the embeddings, so its logit is
    # always 0 and, without a LoRA on the head, no adapter learns to stop (every summary ran on into noise).
    # At 5e-3 the adapter learnt every summary with each of 5 seeds tried; at 1e-2 the loss spiked, and with 3 of 6
    # seed runs it had not learnt them. One thread: on 2 busy shared cores a step took 1.3 s with two threads, 0.05 s with one.
    "finetune": {"device": "cpu", "precision": "fp32", "threads": 1, "max_source_tokens": 64, "max_target_tokens": 16,
                 "batch_size": len(NOTES), "max_steps": 120, "learning_rate": 5e-3, "warmup_steps": 5, "eval_every": 0,
                 "checkpoint_every": 0, "generation_batch_size": len(NOTES),
                 "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": [
                     "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]}},
    "evaluate": {"notes": 0, "adversarial_requests": 2, "perturbations": ["negation_flip"]},
    "review": {"database": "sqlite:///reviews.db", "items_per_candidate": len(NOTES)},
    "promote": {"metrics": [{"name": "rouge_l", "goal": "max", "min_gain": ROUGE_GAIN}],
                "min_approval_rate": 1.0, "max_critical_error_rate": MAX_CRITICAL_ERROR_RATE, "min_reviewed": len(NOTES)},
    "tracking": {"mlflow_uri": "sqlite:///mlflow.db", "artifact_dir": "mlartifacts", "model_prefix": "medlora"},
}


@pytest.fixture
def project(tmp_path):
    """Params for a project in tmp_path with the tiny random base model and MLflow tracking there; restores
    the tracking URIs and torch's thread count afterwards."""
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri(), torch.get_num_threads()
    params = load_params(PROJECT, OVERRIDES)
    prepare_base_model(params.base_model, tmp_path)
    configure_tracking(params, tmp_path)
    yield tmp_path, params
    mlflow.set_tracking_uri(previous[0])
    mlflow.set_registry_uri(previous[1])
    torch.set_num_threads(previous[2])


def failed(decision) -> dict[str, str]:
    return {c.name: c.detail for c in decision.checks if not c.passed}


def test_the_gate_promotes_the_faithful_expert_and_keeps_the_one_that_flips_negations_out(project):
    from flows.evaluate import log_evaluation
    from flows.promote import gate_decisions, read_evaluation

    root, params = project
    # The flipped summaries must be critical errors to the lexicon, and the right ones not: else pick other terms.
    for note, right, flipped in NOTES:
        assert critical_errors(note, right) == [], f"{right!r} is a faithful summary of {note!r}"
        assert critical_errors(note, flipped), f"{flipped!r} flips a negation of {note!r} but is not flagged"

    registered = {}
    for expert, column in ((MULTITASK_EXPERT, 1), (GROUP, 2)):
        tokenizer, base = load_base(params.base_model, root)
        records = [(Request(text=row[0]), row[column]) for row in NOTES]
        train_expert_adapter(expert, records, [], tokenizer, base, params.finetune, root / "adapters" / expert, params.seed,
                             torch.device("cpu"), progress=False)
        registered[expert] = register_expert(root / "adapters" / expert, params, resolve_base_model(params.base_model, root),
                                             {"dvc_data_version": "test"})
    faithful, flipping = (f"{registered[e]['model']}/{registered[e]['version']}" for e in (MULTITASK_EXPERT, GROUP))

    client = MlflowClient()
    refs = candidate_refs(client, params.tracking.model_prefix)
    assert {r.key for r in refs} == {faithful, flipping}
    notes = pd.DataFrame({"note_id": [f"n-{k}" for k in range(len(NOTES))], "expert": GROUP,
                          "text": [n for n, _, _ in NOTES], "target": [right for _, right, _ in NOTES]})
    items = held_out_items(params, root, notes)
    evaluation, results = evaluate_candidates(params, items, refs, base_engine_factory(params, root), champions={},
                                              progress=False)
    evaluation["batch"] = batch = log_evaluation.fn(evaluation)
    (root / EVALUATION_DIR).mkdir(parents=True)
    (root / EVALUATION_DIR / EVALUATION_FILE).write_text(json.dumps(evaluation))

    store = open_store(params, root)
    store.enqueue(batch, queue_items(refs, results, params.review.items_per_candidate, params.seed))
    store.add_reviewer("clinician", "not-a-secret")  # approves everything, flipped negations too: only metrics decide
    for item in store.items(batch=batch, status="pending"):
        store.decide(item.id, "clinician", "approve")

    # The drift stage ran on these notes with no champion yet (what it writes then): nothing to compare, nothing blocks.
    DriftSummary(NO_REFERENCE, False, "no model under 'medlora' has a champion yet: nothing to compare the incoming "
                 "notes with, so drift blocks nothing", "test", len(NOTES)).write(root)
    decisions = {d.key: d for d in gate_decisions(root, params, read_evaluation(root))}
    for decision in decisions.values():
        promote(client, decision)

    scored = {c["key"]: c for c in evaluation["candidates"]}
    assert all(c["metrics"]["notes"] == len(NOTES) for c in scored.values())
    for key in (faithful, flipping):  # both reproduce their summaries: ROUGE-L far above the base model's noise
        assert scored[key]["metrics"]["rouge_l"] > scored[key]["base_metrics"]["rouge_l"] + ROUGE_GAIN, scored[key]
    assert scored[faithful]["metrics"]["critical_error_rate"] <= MAX_CRITICAL_ERROR_RATE, results[faithful].scored
    assert scored[flipping]["metrics"]["critical_error_rate"] > MAX_CRITICAL_ERROR_RATE, results[flipping].scored
    assert any(error.startswith("negation flip") for s in results[flipping].scored for error in s.critical_errors)

    assert decisions[faithful].promote, decisions[faithful].reasons
    assert {"rouge_l vs base model", "critical error rate", "approval rate", "data drift"} <= {c.name for c in decisions[faithful].checks}
    assert not decisions[flipping].promote, decisions[flipping].reasons
    # and, a specialty expert, it is also measured against the multi-task adapter on its own group, which it loses
    assert scored[flipping]["multitask"] == faithful and "multitask_metrics" not in scored[faithful]
    assert set(failed(decisions[flipping])) == {"critical error rate", "rouge_l vs multi-task adapter"}, decisions[flipping].reasons

    model, flipping_model = registered[MULTITASK_EXPERT]["model"], registered[GROUP]["model"]
    assert model == registered_name(params, MULTITASK_EXPERT)
    assert alias_version(client, model, CHAMPION) == registered[MULTITASK_EXPERT]["version"]
    assert alias_version(client, flipping_model, CHAMPION) is None
    kept_out = client.get_model_version(flipping_model, registered[GROUP]["version"]).tags
    assert kept_out["promotion"] == "keep out" and "critical error rate" in kept_out["promotion_reasons"]
    # The next evaluation's candidates: the champion is no longer one, the expert kept out still is.
    assert {r.key for r in candidate_refs(client, params.tracking.model_prefix)} == {flipping}
