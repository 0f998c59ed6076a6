"""The whole pipeline on the tiny preset: real Prefect, DVC, GX, Presidio, PEFT and MLflow in a temp project."""

import json
import re

import pandas as pd
import pytest
import yaml

from flows.pipeline import pipeline_flow
from tasks.corpus.generate import read_gold_spans
from tasks.params import load_params
from tests.conftest import project_mlflow



def test_every_stage_ran_then_was_reused(finished_project):
    _, first, second = finished_project
    stages = ["corpus", "prepare_base", "ingest", "deidentify", "validate", "drift", "augment", "finetune", "register", "route", "distil",
              "evaluate"]
    assert [r.stage for r in first] == stages and not any(r.reused for r in first)
    assert [r.stage for r in second] == stages and all(r.reused for r in second)
    ingest = next(r for r in first if r.stage == "ingest")
    assert ingest.records_in == ingest.records_out + ingest.metrics["quarantined"]


def test_one_registered_model_per_expert_tagged_with_commit_and_data_version(finished_project):
    project, _, _ = finished_project
    params = load_params(project)
    client = project_mlflow(project)
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    data_version = next(o["md5"] for o in lock["stages"]["validate"]["outs"] if o["path"] == "data/validated")
    assert params.trained_experts() == ["multitask", *params.experts, "pubmedqa"]
    for expert in params.trained_experts():
        versions = client.search_model_versions(f"name='medlora-expert-{expert}'")
        assert len(versions) == 1
        tags = versions[0].tags
        assert len(tags["git_commit"].removesuffix("-dirty")) == 40
        assert tags["dvc_data_version"] == data_version
        adapter = project / "models" / "adapters" / expert
        assert (adapter / "adapter_config.json").exists() and (adapter / "adapter_model.safetensors").exists()


def _mentions(value: str, text: str) -> bool:
    return re.search(rf"(?<![a-z0-9]){re.escape(value)}(?![a-z0-9])", text) is not None


def test_no_gold_phi_reaches_deidentified_data_or_registered_artifacts(finished_project):
    project, _, _ = finished_project
    gold = read_gold_spans(project / "data" / "raw" / "sample")
    identifying = ("PATIENT", "CLINICIAN", "SSN", "MRN", "EMAIL", "PHONE", "STREET")
    gold_by_row = {row: [s.text.lower() for s in spans if s.entity_type in identifying]
                   for row, spans in enumerate(gold.values(), start=1)}  # JSONL line = source row
    deid = pd.read_parquet(project / "data" / "deid" / "notes.parquet")
    # Per note: a surrogate may by chance be another patient's real surname, never this note's.
    leaked = [(row, value) for row, text, target in zip(deid["source_row"], deid["text"], deid["target"])
              for value in gold_by_row[row] if _mentions(value, f"{text}\n{target}".lower())]
    assert leaked == []
    # The review queue holds de-identified notes, surrogates included: checked per note like the data above.
    from tasks.review.project import open_store

    row_of = dict(zip(deid["note_id"], deid["source_row"]))
    items = [i for i in open_store(load_params(project), project).items() if i.request_id in row_of]
    assert items
    leaked = [(i.id, value) for i in items for value in gold_by_row[row_of[i.request_id]]
              if _mentions(value, f"{i.input_text}\n{i.output_text}\n{i.reference}".lower())]
    assert leaked == []
    # Left out: the base model's tokenizer vocabulary (in models/base and in the bundle's copy), which has names.
    outside_phi_zone = [p for p in project.rglob("*") if p.is_file() and p.suffix in (".json", ".yaml", ".yml", ".txt", ".MLmodel", ".db")
                        and p.name not in ("reviews.db", "tokenizer.json", "vocab.json", "merges.txt")
                        and not {"raw", "base", ".dvc", ".git"} & set(p.parts)]
    blob = " ".join(p.read_text(errors="ignore").lower() for p in outside_phi_zone)
    every_value = {v for values in gold_by_row.values() for v in values if len(v) > 3}
    assert sorted(v for v in every_value if _mentions(v, blob)) == []


def test_outputs_pushed_to_the_local_remote_except_the_phi_zone(finished_project):
    project, _, _ = finished_project
    remote_files = [p for p in (project / ".dvc-remote").rglob("*") if p.is_file()]
    assert remote_files
    raw_hashes = json.dumps(yaml.safe_load((project / "dvc.lock").read_text())["stages"]["ingest"]["outs"])
    assert not any(p.name in raw_hashes for p in remote_files)


def test_validation_gate_stops_the_flow_before_training(tmp_path, prefect_api):
    from tasks.validate.suite import ValidationGateError

    from .conftest import make_project

    project = make_project(tmp_path, overrides={"validate": {"max_target_chars": 5}})
    with pytest.raises(ValidationGateError, match=r"36 of 36 notes quarantined \(100.0%\), more than validate.max_quarantined_share"):
        pipeline_flow(root=str(project))
    assert not (project / "models" / "adapters").exists()


def test_validate_logs_counts_and_data_docs_to_mlflow_and_prefect(finished_project):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    project, first, _ = finished_project
    client = project_mlflow(project)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.`medlora.stage` = 'validate'")
    assert len(runs) == 1
    metrics, docs = runs[0].data.metrics, runs[0].data.tags["medlora.data_docs"]
    assert metrics["read"] == metrics["kept"] + metrics["quarantined"] > 0
    assert metrics["kept"] == metrics["train_notes"] + metrics["val_notes"] + metrics["test_notes"]
    assert docs.endswith("index.html") and (project / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html").exists()
    assert any(a.path.startswith("data_docs") for a in client.list_artifacts(runs[0].info.run_id))
    with get_client(sync_client=True) as prefect:
        links = prefect.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["validate-data-docs"])))
    assert links and "data_docs/local_site/index.html" in links[0].data


def test_each_expert_run_logs_training_figures_the_loss_curve_and_the_peft_adapter(finished_project):
    project, _, _ = finished_project
    client = project_mlflow(project)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.`medlora.stage` = 'finetune'")
    by_expert = {run.data.tags["medlora.expert"]: run for run in runs}
    assert set(by_expert) == set(load_params(project).trained_experts())
    for expert, run in by_expert.items():
        metrics, logged = run.data.metrics, run.data.params
        assert {"tokens_per_second", "supervised_tokens_per_second", "seconds", "peak_memory_mb"} <= set(metrics)
        assert ({"val_loss", "val_perplexity"} <= set(metrics)) == (int(logged["val_examples"]) > 0)
        assert metrics["tokens_per_second"] > 0 and metrics["peak_memory_mb"] > 0 and metrics["steps"] == 2
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2]
        assert {"lora_r", "lora_alpha", "lora_dropout", "target_modules", "learning_rate", "max_source_tokens"} <= set(logged)
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert "loss_curve.png" in artifacts
        adapter = {a.path for a in client.list_artifacts(run.info.run_id, "adapter")}
        assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= adapter
    assert by_expert["pubmedqa"].data.tags["medlora.expert_kind"] == "task"
    assert int(by_expert["pubmedqa"].data.params["val_examples"]) > 0
    assert 0 <= by_expert["pubmedqa"].data.metrics["val_accuracy"] <= 1
    every_specialty = [s for group in load_params(project).experts.values() for s in group]
    assert by_expert["multitask"].data.params["data"] == "; ".join(every_specialty)


def test_predict_answers_notes_and_questions_and_reports_bad_lines(finished_project, tmp_path):
    from flows.cli import main

    project, _, _ = finished_project
    records = [{"id": "a", "text": "Chest pain for two days, troponin negative, stress test planned."},
               {"id": "b", "question": "Does aspirin lower mortality?", "context": "In 400 patients aspirin lowered mortality."},
               {"id": "c", "question": "Is it?"}]
    lines = [json.dumps(r) for r in records] + ["{not json", json.dumps({"text": "a note without id"})]
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("\n".join(lines) + "\n")
    for model in ("medlora-expert-pubmedqa", "medlora-expert-pubmedqa/1"):
        assert main(["--root", str(project), "predict", "--model", model, "--input", str(source), "--output", str(output)]) == 1
        results = [json.loads(line) for line in output.read_text().splitlines()]
        assert [r.get("id") for r in results] == ["a", "b", "c", None, None]
        assert isinstance(results[0]["prediction"], str) and "answer" not in results[0]
        assert results[1]["answer"] in ("yes", "no", "maybe")
        assert sum(results[1]["answer_probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
        assert results[2]["error"] == f"{source} line 3: field 'context' must be a non-empty string when 'question' is given"
        assert results[3]["error"].startswith(f"{source} line 4: not valid JSON")
        assert results[4]["error"] == f"{source} line 5: field 'id' is missing"
    assert main(["--root", str(project), "predict", "--model", "medlora-expert-nope@champion",
                 "--input", str(source), "--output", str(output)]) == 2


def test_route_stage_registers_the_router_with_its_evaluation_beside_the_experts(finished_project):
    project, first, _ = finished_project
    params = load_params(project)
    evaluation = json.loads((project / "models" / "router" / "evaluation.json").read_text())
    assert evaluation["experts"] == [*params.experts, "pubmedqa"]
    assert [r["system"] for r in evaluation["downstream"]] == [
        "base model", "multi-task LoRA", "router mixture", "oracle expert", "uniform mixture"]
    assert all(r["target_loss"] > 0 and 0 <= r["rouge_l"] <= 1 for r in evaluation["downstream"])
    notes = evaluation["routing"]["notes"]
    assert sum(map(sum, notes["confusion"])) == notes["requests"] > 0
    assert sum(notes["utilisation"]["share"].values()) == pytest.approx(1.0, abs=1e-3)
    assert len(evaluation["training"]["val_accuracy_per_epoch"]) > 0

    client = project_mlflow(project)
    version = client.search_model_versions("name='medlora-bundle'")
    assert len(version) == 1
    experts = json.loads(version[0].tags["experts"])
    assert experts == {e: f"medlora-expert-{e}/1" for e in evaluation["experts"]}
    run = client.get_run(version[0].run_id)
    assert run.data.metrics["routing_accuracy_notes"] == notes["accuracy"]
    assert {"target_loss_router_mixture", "rouge_l_oracle_expert", "utilisation_entropy_bits_notes"} <= set(run.data.metrics)
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/confusion_notes.png", "plots/utilisation_notes.png", "plots/downstream.png"} <= plots

    composed = {c["expert"]: c for c in evaluation["composed"]}
    assert set(composed) == {"nephrology"}
    nephrology = composed["nephrology"]
    if "skipped" not in nephrology:  # the tiny corpus may leave no held-out nephrology note
        assert client.search_model_versions("name='medlora-expert-nephrology'")[0].tags["kind"] == "composed"
        assert [r["system"] for r in nephrology["held_out"]] == ["base model", "uniform mixture", "composed"]


def test_route_command_writes_weights_per_record_and_flags_bad_lines(finished_project, tmp_path):
    from flows.cli import main

    project, _, _ = finished_project
    experts = json.loads((project / "models" / "router" / "evaluation.json").read_text())["experts"]
    records = [{"id": "n1", "text": "Knee pain after a fall; x-ray shows a tibial plateau fracture."},
               {"id": "q1", "question": "Does aspirin lower mortality?", "context": "In 400 patients aspirin lowered mortality."},
               {"id": "bad", "text": ""}]
    source, output, merged = tmp_path / "notes.jsonl", tmp_path / "routes.jsonl", tmp_path / "merged"
    source.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    for model in ([], ["--model", "medlora-bundle"]):
        assert main(["--root", str(project), "route", "--input", str(source), "--output", str(output),
                     "--merged-adapters", str(merged), *model]) == 1
        routes = [json.loads(line) for line in output.read_text().splitlines()]
        assert [r["id"] for r in routes] == ["n1", "q1", "bad"]
        for route in routes[:2]:
            assert list(route["weights"]) == experts and sum(route["weights"].values()) == pytest.approx(1.0, abs=1e-4)
            assert sum(w > 0 for w in route["weights"].values()) <= load_params(project).route.top_k
            assert route["expert"] in experts and (merged / route["adapter"] / "adapter_model.safetensors").exists()
        assert routes[2]["error"].startswith(f"{source} line 3:")


def test_registered_bundle_answers_with_its_mixture_and_flags_bad_rows(finished_project):
    import mlflow

    project, _, _ = finished_project
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    mlflow.set_registry_uri(f"sqlite:///{project / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model("models:/medlora-bundle/1")
    answers = model.predict(pd.DataFrame([{"text": "Chest pain and dyspnea on exertion, echo ordered."},
                                          {"question": "Does heparin reduce stroke?", "context": "Heparin reduced stroke in 300 adults."},
                                          {"messages": [{"role": "user", "content": "Knee pain after a fall."}], "model": "orthopedic"},
                                          {"text": "Headache.", "model": "no-such-expert"},
                                          {"text": ""}]))
    assert {"text", "model", "expert", "weights", "flags", "needs_review", "answer", "answer_probabilities", "error"} <= set(answers.columns)
    assert answers.loc[1, "answer"] in ("yes", "no", "maybe")
    assert sum(json.loads(answers.loc[0, "weights"]).values()) == pytest.approx(1.0, abs=1e-4)
    assert json.loads(answers.loc[2, "weights"]) == {"orthopedic": 1.0} and answers.loc[2, "expert"] == "orthopedic"
    assert answers.loc[0, "needs_review"] == bool(json.loads(answers.loc[0, "flags"]))
    assert answers.loc[3, "error"].startswith("input row 3: model 'no-such-expert' is not served")
    assert answers.loc[4, "error"].startswith("input row 4: a record needs")


def test_distil_stage_registers_a_smaller_student_scored_beside_its_teacher_and_evaluated_as_a_candidate(finished_project):
    project, first, _ = finished_project
    report = next(r for r in first if r.stage == "distil")
    distillation = json.loads((project / "models" / "student" / "distillation.json").read_text())
    rows = {row["system"]: row for row in distillation["held_out"]}
    assert list(rows) == ["student", "supervised-only student", "teacher (routed bundle)", "base model"]
    assert all({"perplexity", "accuracy", "tokens_per_s", "parameters", "peak_memory_mb"} <= set(row) for row in rows.values())
    assert rows["student"]["parameters"] == rows["supervised-only student"]["parameters"] < rows["base model"]["parameters"]
    assert distillation["how"]["kept_layers"] in ([0], [1]) and distillation["how"]["depth"] == 2
    cache = distillation["cache"]
    assert cache["bytes"] == cache["tokens"] * cache["top_k"] * 6 > 0  # int32 id and float16 logit per kept logit
    assert [t["name"] for t in distillation["trainings"]] == ["student", "supervised-only student"]
    assert distillation["trainings"][1]["examples"]["teacher"] == 0 < distillation["trainings"][0]["examples"]["teacher"]

    client = project_mlflow(project)
    version = client.get_model_version("medlora-student", report.metrics["student_version"])
    assert {"git_commit", "dvc_data_version", "kept_layers"} <= set(version.tags)
    run = client.get_run(version.run_id)
    assert run.data.metrics["student/tokens_per_s"] == rows["student"]["tokens_per_s"]
    assert run.data.params["distil_top_k"] == str(cache["top_k"])
    assert {"held_out.json", "distillation.json"} <= {a.path for a in client.list_artifacts(run.info.run_id)}

    evaluation = json.loads((project / "reports" / "evaluation" / "evaluation.json").read_text())
    student = next(c for c in evaluation["candidates"] if c["model"] == "medlora-student")
    assert student["scope"] == "all" and student["metrics"]["perplexity"] == rows["student"]["perplexity"]


def test_evaluate_stage_scores_every_candidate_beside_the_base_model_and_queues_outputs_for_review(finished_project):
    from tasks.review.project import open_store

    project, first, _ = finished_project
    evaluation = json.loads((project / "reports" / "evaluation" / "evaluation.json").read_text())
    candidates = {c["model"]: c for c in evaluation["candidates"]}
    params = load_params(project)
    assert {f"medlora-expert-{e}" for e in params.trained_experts()} | {"medlora-bundle"} <= set(candidates)
    router = candidates["medlora-bundle"]
    assert router["scope"] == "all" and router["champion"] is None
    assert {"rouge_l", "accuracy", "macro_f1", "ece", "perplexity", "critical_error_rate", "latency_ms"} <= set(router["metrics"])
    assert set(router["base_metrics"]) == set(router["metrics"])
    assert {"auroc_token_entropy", "auroc_energy", "auroc_unsupported_entities"} <= set(router["safety"])
    assert {r["perturbation"] for r in router["robustness"]} == {"negation_flip", "typos"}
    assert "accuracy" not in candidates["medlora-expert-multitask"]["metrics"]
    assert "rouge_l" not in candidates["medlora-expert-pubmedqa"]["metrics"]

    store = open_store(params, project)
    assert store.latest_batch() == evaluation["batch"]
    summary = store.summary(evaluation["batch"])
    assert set(summary) == {c["key"] for c in evaluation["candidates"] if "skipped" not in c}
    requests = {c["key"]: c["metrics"]["requests"] for c in evaluation["candidates"] if "skipped" not in c}
    assert all(row["pending"] == row["items"] == min(params.review.items_per_candidate, requests[key])
               for key, row in summary.items())
    for key in summary:  # flagged outputs are sampled before random ones
        sampled = [item.sampled for item in sorted(store.items(candidate=key), key=lambda i: i.id)]
        assert sampled == sorted(sampled)
    evaluate_report = next(r for r in first if r.stage == "evaluate")
    assert evaluate_report.records_out == sum(row["items"] for row in summary.values())

    client = project_mlflow(project)
    run = client.get_run(client.get_model_version("medlora-bundle", router["version"]).tags["evaluation_run"])
    assert run.data.metrics[f"{router['key']}/perplexity"] == router["metrics"]["perplexity"]
    tables = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"candidates.json", "safety_auroc.json", "robustness.json", "evaluation.json"} <= tables


def test_after_review_through_the_cli_the_gate_promotes_and_the_champion_alias_resolves(finished_project, capsys):
    import mlflow

    from flows.cli import main

    project, _, _ = finished_project
    root = ["--root", str(project)]
    assert main([*root, "promote"]) == 0  # nothing reviewed yet: every candidate is kept out
    client = project_mlflow(project)
    assert not client.get_registered_model("medlora-bundle").aliases
    assert main([*root, "review", "add-reviewer", "alice", "--password", "correct horse"]) == 0
    assert main([*root, "review", "list", "--pending"]) == 0
    assert main([*root, "review", "decide", "--all-pending", "--decision", "approve", "--reviewer", "alice"]) == 0
    capsys.readouterr()
    assert main([*root, "promote"]) == 0
    assert "promote" in capsys.readouterr().out

    evaluation = json.loads((project / "reports" / "evaluation" / "evaluation.json").read_text())
    router = next(c for c in evaluation["candidates"] if c["model"] == "medlora-bundle")
    assert router["metrics"]["perplexity"] < router["base_metrics"]["perplexity"]
    assert str(client.get_model_version_by_alias("medlora-bundle", "champion").version) == router["version"]
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    mlflow.set_registry_uri(f"sqlite:///{project / 'mlflow.db'}")
    assert mlflow.pyfunc.load_model("models:/medlora-bundle@champion").metadata.run_id == \
        client.get_model_version("medlora-bundle", router["version"]).run_id
    promotion = mlflow.search_runs(filter_string="tags.`medlora.stage` = 'promote'", order_by=["start_time DESC"])
    assert len(promotion) == 2
    decisions = {a.path for a in client.list_artifacts(promotion.iloc[0]["run_id"])}
    assert "promotion_decision.json" in decisions
