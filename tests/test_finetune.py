"""The LoRA trainer on the tiny random model: what it computes, and that it survives a kill."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tasks.base_model import load_base, prepare_base_model
from tasks.finetune.examples import IGNORE_INDEX, Request, answer_token_ids, tokenize_example
from tasks.finetune.precision import frozen_weights_cast
from tasks.finetune.pubmedqa import read_pubmedqa, split_pubmedqa
from tasks.finetune.train import (
    CHECKPOINT_FILE,
    LoopState,
    TrainingReport,
    add_lora,
    collate,
    length_grouped_batches,
    save_checkpoint,
    summed_target_loss,
    train_expert_adapter,
)
from tasks.params import FinetuneParams, LoraParams

from .conftest import PROJECT, shared_corpus

WORDS = "patient presents with chest pain dyspnea fever cough knee fracture headache seizure renal stone".split()


def synthetic_pairs(count: int, seed: int = 0) -> list[tuple[Request, str]]:
    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        note = " ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 60)))
        pairs.append((Request(text=note), " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9)))))
    return pairs


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny-base")
    prepare_base_model("tiny-random", root)
    return root


def tiny_settings(**changes) -> FinetuneParams:
    defaults = dict(max_source_tokens=64, max_target_tokens=12, batch_size=4, max_steps=6, learning_rate=1e-3,
                    warmup_steps=1, precision="fp32", lora=LoraParams(r=4, alpha=8, dropout=0.0))
    return FinetuneParams(**(defaults | changes))


def test_loss_is_on_target_tokens_only_and_matches_the_full_lm_head(tiny_root):
    tokenizer, model = load_base("tiny-random", tiny_root)
    examples = [tokenize_example(tokenizer, r, t, 64, 12) for r, t in synthetic_pairs(5)]
    for example in examples:
        prompt_length = example.labels.index(next(label for label in example.labels if label != IGNORE_INDEX))
        assert example.input_ids[prompt_length:] == example.labels[prompt_length:]
        assert example.labels[-1] == tokenizer.eos_token_id
    batch = collate(examples, tokenizer.pad_token_id, torch.device("cpu"))
    ours = summed_target_loss(model, batch) / sum(e.supervised_tokens for e in examples)
    full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    assert ours.item() == pytest.approx(full.item(), rel=1e-5)


def test_frozen_weights_cast_once_give_autocasts_numbers_and_are_restored(tiny_root):
    tokenizer, base = load_base("tiny-random", tiny_root)
    model = add_lora(base, tiny_settings())
    batch = collate([tokenize_example(tokenizer, r, t, 64, 12) for r, t in synthetic_pairs(4)], tokenizer.pad_token_id,
                    torch.device("cpu"))
    weights = {name: p for name, p in model.named_parameters()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast_loss = summed_target_loss(model, batch)
        with frozen_weights_cast(model, "bf16"):
            frozen = {n for n, p in model.named_parameters() if p.dtype == torch.bfloat16}
            cast_loss = summed_target_loss(model, batch)
    assert torch.equal(autocast_loss, cast_loss)
    assert frozen and all("lora_" not in n and not weights[n].requires_grad for n in frozen)
    assert model.get_input_embeddings().weight.dtype == torch.float32  # tied to the LM head: kept as is
    assert all(p.dtype == torch.float32 and p is weights[n] for n, p in model.named_parameters())
    with frozen_weights_cast(model, "fp32"):
        assert all(p.dtype == torch.float32 for p in model.parameters())


def test_a_question_weighs_its_answer_token_as_configured(tiny_root):
    tokenizer, model = load_base("tiny-random", tiny_root)
    request = Request(question="Does it work?", context="It worked in most patients.")
    plain, weighted = (tokenize_example(tokenizer, request, "yes. It worked.", 64, 12, answer_weight=w) for w in (1.0, 4.0))
    assert weighted.loss_weight == plain.loss_weight + 3
    losses = [summed_target_loss(model, collate([e], tokenizer.pad_token_id, torch.device("cpu"))).item() for e in (plain, weighted)]
    first = plain.labels.index(next(label for label in plain.labels if label != IGNORE_INDEX))
    logits = model(input_ids=torch.tensor([plain.input_ids])).logits[0, first - 1]
    decision_loss = torch.nn.functional.cross_entropy(logits, torch.tensor(plain.labels[first])).item()
    assert losses[1] - losses[0] == pytest.approx(3 * decision_loss, rel=1e-4)
    note = tokenize_example(tokenizer, Request(text="a note"), "a summary", 64, 12, answer_weight=4.0)
    assert note.answer_weight == 1.0


def test_length_grouping_pads_less_than_random_batches_and_equal_lengths_need_no_mask(tiny_root):
    tokenizer, _ = load_base("tiny-random", tiny_root)
    examples = [tokenize_example(tokenizer, r, t, 64, 12) for r, t in synthetic_pairs(64)]
    padding = lambda batches: sum(max(len(e.input_ids) for e in b) * len(b) - sum(len(e.input_ids) for e in b) for b in batches)  # noqa: E731
    grouped = length_grouped_batches(examples, 4, random.Random(0))
    shuffled = examples[:]
    random.Random(0).shuffle(shuffled)
    assert sorted(id(e) for b in grouped for e in b) == sorted(id(e) for e in examples)
    assert padding(grouped) < padding([shuffled[i : i + 4] for i in range(0, 64, 4)]) / 3
    same_length = [e for e in examples if len(e.input_ids) == len(examples[0].input_ids)][:1] * 3
    assert collate(same_length, tokenizer.pad_token_id, torch.device("cpu"))["attention_mask"] is None


def test_gradient_accumulation_gives_the_update_of_the_whole_batch(tiny_root, tmp_path):
    pairs = synthetic_pairs(8, seed=3)
    weights = []
    for batch_size, accumulation in ((8, 1), (2, 4)):
        tokenizer, base = load_base("tiny-random", tiny_root)
        settings = tiny_settings(batch_size=batch_size, gradient_accumulation=accumulation, max_steps=1, warmup_steps=0)
        _, model = train_expert_adapter("acc", pairs, [], tokenizer, base, settings, tmp_path / f"a{batch_size}", 0,
                                        torch.device("cpu"), progress=False)
        weights.append({k: v.clone() for k, v in model.state_dict().items() if "lora_" in k})
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        assert torch.allclose(weights[0][key], weights[1][key], atol=1e-6), key


def test_early_stopping_keeps_the_best_adapter(tiny_root, tmp_path):
    tokenizer, base = load_base("tiny-random", tiny_root)
    # A min_delta no change can meet: the first evaluation is the best, the next one stops the run.
    settings = tiny_settings(max_steps=40, eval_every=2, early_stopping_patience=1, early_stopping_min_delta=100.0)
    report, _ = train_expert_adapter("early", synthetic_pairs(16), synthetic_pairs(4, seed=9), tokenizer, base, settings,
                                     tmp_path / "early", 0, torch.device("cpu"), progress=False)
    assert report.stopped_early and report.steps == 4
    assert [step for step, _ in report.val_loss_per_eval] == [2, 4]
    assert report.val_loss == report.val_loss_per_eval[0][1]
    assert json.loads((tmp_path / "early" / "training.json").read_text())["stopped_early"] is True
    assert (tmp_path / "early" / "adapter_model.safetensors").exists()


def test_an_expert_can_start_from_another_adapter_and_keeps_it_unless_it_improves(tiny_root, tmp_path):
    tokenizer, base = load_base("tiny-random", tiny_root)
    generalist, _ = train_expert_adapter("generalist", synthetic_pairs(24), synthetic_pairs(6, seed=3), tokenizer, base,
                                         tiny_settings(max_steps=4, eval_every=2), tmp_path / "generalist", 0,
                                         torch.device("cpu"), progress=False)
    _, fresh = load_base("tiny-random", tiny_root)
    # A learning rate that only makes things worse: the adapter it started from is what is saved.
    report, model = train_expert_adapter("specialist", synthetic_pairs(12, seed=1), synthetic_pairs(6, seed=3), tokenizer, fresh,
                                         tiny_settings(max_steps=4, eval_every=2, learning_rate=5.0), tmp_path / "specialist", 0,
                                         torch.device("cpu"), progress=False, init_adapter=tmp_path / "generalist")
    steps = [step for step, _ in report.val_loss_per_eval]
    assert steps[0] == 0 and report.val_loss_per_eval[0][1] == pytest.approx(generalist.val_loss, rel=1e-4)
    assert report.val_loss == min(loss for _, loss in report.val_loss_per_eval) == report.val_loss_per_eval[0][1]
    from safetensors.torch import load_file

    saved, start = (load_file(str(tmp_path / name / "adapter_model.safetensors")) for name in ("specialist", "generalist"))
    assert saved.keys() == start.keys() and all(torch.equal(saved[k], start[k]) for k in saved)


# Enough steps that the run is still going when the test sees its first checkpoint (step 2) and kills it.
RESUMABLE_STEPS = 60


def resumable_run(tiny_root: Path, out: Path, checkpoints: Path) -> dict:
    tokenizer, base = load_base("tiny-random", tiny_root)
    settings = tiny_settings(max_steps=RESUMABLE_STEPS, checkpoint_every=2, eval_every=20,
                             lora=tiny_settings().lora.model_copy(update={"dropout": 0.1}))
    report, _ = train_expert_adapter("resumable", synthetic_pairs(40), synthetic_pairs(6, seed=5), tokenizer, base, settings,
                                     out, 7, torch.device("cpu"), checkpoint_dir=checkpoints, progress=False)
    return {"steps": report.steps, "resumed_from_step": report.resumed_from_step, "losses": report.loss_per_step}


KILLABLE_RUN = """
import sys
from pathlib import Path
sys.path.insert(0, {project!r})
from tests.test_finetune import resumable_run
resumable_run(Path({root!r}), Path({out!r}), Path({checkpoints!r}))
"""


def test_a_killed_run_resumes_from_its_checkpoint_and_ends_like_an_uninterrupted_one(tiny_root, tmp_path):
    # Killed in a process of its own; resumed, and run whole for comparison, in this one (each process spends
    # about 10 s importing torch and PEFT).
    checkpoints = tmp_path / "killed-checkpoints"
    checkpoint = checkpoints / "resumable" / CHECKPOINT_FILE
    script = KILLABLE_RUN.format(project=str(PROJECT), root=str(tiny_root), out=str(tmp_path / "killed"),
                                 checkpoints=str(checkpoints))
    worker = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and worker.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    assert worker.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert checkpoint.exists() and not (tmp_path / "killed" / "training.json").exists()

    resumed = resumable_run(tiny_root, tmp_path / "killed", checkpoints)
    uninterrupted = resumable_run(tiny_root, tmp_path / "whole", tmp_path / "whole-checkpoints")
    assert 0 < resumed["resumed_from_step"] < RESUMABLE_STEPS
    assert resumed["steps"] == uninterrupted["steps"] == RESUMABLE_STEPS
    assert resumed["losses"] == pytest.approx(uninterrupted["losses"], abs=1e-4)
    assert not checkpoint.exists(), "a finished run removes its checkpoint"


def test_a_checkpoint_of_other_settings_is_not_resumed(tiny_root, tmp_path):
    tokenizer, base = load_base("tiny-random", tiny_root)
    pairs = synthetic_pairs(8)
    checkpoints = tmp_path / "checkpoints"
    first = tiny_settings(max_steps=4, checkpoint_every=2)
    train_expert_adapter("x", pairs, [], tokenizer, base, first, tmp_path / "x", 0, torch.device("cpu"), checkpoints, False)
    leftover = checkpoints / "x" / CHECKPOINT_FILE
    tokenizer, base = load_base("tiny-random", tiny_root)
    model = add_lora(base, first)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    save_checkpoint(leftover, "another-run", model, optimizer, scheduler, LoopState(step=3), TrainingReport("x", 8, 0))
    tokenizer, base = load_base("tiny-random", tiny_root)
    report, _ = train_expert_adapter("x", pairs, [], tokenizer, base, first, tmp_path / "x", 0, torch.device("cpu"), checkpoints, False)
    assert report.resumed_from_step == 0 and report.steps == 4


def test_question_examples_keep_the_question_and_the_tail_of_the_abstract(tiny_root):
    tokenizer, _ = load_base("tiny-random", tiny_root)
    context = "BACKGROUND first words. " + "filler " * 300 + "RESULTS the drug lowered mortality."
    example = tokenize_example(tokenizer, Request(question="Does the drug work?", context=context), "yes. It does.", 40, 16)
    prompt = tokenizer.decode(example.input_ids)
    assert "Does the drug work?" in prompt and "RESULTS the drug lowered mortality." in prompt
    assert "BACKGROUND" not in prompt
    first_answer_token = example.labels[next(i for i, label in enumerate(example.labels) if label != IGNORE_INDEX)]
    assert first_answer_token in answer_token_ids(tokenizer)["yes"]


def test_records_without_text_or_question_name_the_line_and_field():
    with pytest.raises(ValueError, match=r"in.jsonl line 3: field 'context' must be a non-empty string"):
        Request.from_record({"id": 1, "question": "Is it?"}, "in.jsonl line 3")
    with pytest.raises(ValueError, match=r"line 4: a record needs a non-empty 'text'"):
        Request.from_record({"id": 1, "text": "  "}, "line 4")


def test_pubmedqa_split_is_stable_and_disjoint():
    items = read_pubmedqa(shared_corpus("pubmedqa/pqal.json"))
    parts = split_pubmedqa(items, seed=13, holdout=0.3, val=0.1)
    again = split_pubmedqa(list(reversed(items)), seed=13, holdout=0.3, val=0.1)
    assert {k: sorted(i.pmid for i in v) for k, v in parts.items()} == {k: sorted(i.pmid for i in v) for k, v in again.items()}
    assert sum(len(v) for v in parts.values()) == len(items) == 500
    assert 0.2 < len(parts["test"]) / len(items) < 0.4
    assert all(i.target.split(".")[0] in ("yes", "no", "maybe") for i in items)


def test_a_malformed_pubmedqa_file_names_the_item_and_field(tmp_path):
    path = tmp_path / "qa.json"
    path.write_text(json.dumps({"123": {"QUESTION": "q", "CONTEXTS": ["c"], "final_decision": "perhaps", "LONG_ANSWER": "a"}}))
    with pytest.raises(ValueError, match=r"qa.json: item 123 field 'final_decision' must be one of"):
        read_pubmedqa(path)
