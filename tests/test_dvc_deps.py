"""dvc.yaml's deps cover every project module each stage's code imports, so no code change leaves a stale
stage marked up to date. The code is read with `ast`: nothing here imports torch, MLflow or Prefect."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from tasks.stage_dependencies import (covers, dvc_stage_deps, pipeline_stage_names, stage_modules, suggested_deps,
                                      uncovered_modules)

from .conftest import PROJECT

STAGES = pipeline_stage_names(PROJECT)
CODE_DIRS = ("flows/", "tasks/")


def code_deps(deps: list[str]) -> list[str]:
    return [dep for dep in deps if dep.startswith(CODE_DIRS)]


@pytest.fixture
def tiny_project(tmp_path: Path) -> Path:
    """flows/demo.py -> stage_runtime and (inside a function) tasks.demo.work -> relative import of a sibling,
    which imports tasks.params inside a function; tasks.loud is a package whose __init__ runs code."""
    files = {
        "flows/__init__.py": '"""Flows."""\n',
        "flows/demo.py": "import numpy\nfrom flows.stage_runtime import stage_run\n\n\n"
                         "def demo_flow():\n    from tasks.demo import work\n    return work\n",
        "flows/stage_runtime.py": "from contextlib import contextmanager\n",
        "tasks/__init__.py": '"""Tasks."""\n',
        "tasks/params.py": "import yaml\n",
        "tasks/demo/__init__.py": '"""Demo."""\nfrom __future__ import annotations\n',
        "tasks/demo/work.py": "from .sibling import helper_value\nfrom tasks.loud.thing import THING\n",
        "tasks/demo/sibling.py": "def helper_value():\n    from tasks import params\n    return params\n",
        "tasks/demo/unused.py": "import os\n",
        "tasks/loud/__init__.py": "REGISTRY = {}\n",
        "tasks/loud/thing.py": "THING = 1\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_imports_are_followed_through_functions_relative_imports_and_packages_that_run_code(tiny_project):
    assert [str(p) for p in stage_modules("demo", tiny_project)] == [
        "flows/demo.py", "flows/stage_runtime.py", "tasks/demo/sibling.py", "tasks/demo/work.py",
        "tasks/loud/__init__.py", "tasks/loud/thing.py", "tasks/params.py"]


def test_a_module_missing_from_the_deps_is_reported(tiny_project):
    deps = ["flows/demo.py", "flows/stage_runtime.py", "tasks/demo", "tasks/loud"]
    assert uncovered_modules("demo", deps, tiny_project) == [PurePosixPath("tasks/params.py")]
    assert uncovered_modules("demo", deps + ["tasks/params.py"], tiny_project) == []


def test_suggested_deps_name_a_directory_only_when_the_stage_uses_all_of_it(tiny_project):
    assert suggested_deps("demo", tiny_project) == [
        "flows/demo.py", "flows/stage_runtime.py", "tasks/params.py",
        "tasks/demo/sibling.py", "tasks/demo/work.py", "tasks/loud"]


def test_dropping_a_real_dep_is_caught():
    route = dvc_stage_deps(PROJECT)["route"]
    assert PurePosixPath("tasks/params.py") in uncovered_modules("route", [d for d in route if d != "tasks/params.py"], PROJECT)


def test_a_directory_covers_its_files_but_not_a_sibling_with_the_same_prefix():
    assert covers(["tasks/route"], PurePosixPath("tasks/route/stage.py"))
    assert covers(["tasks/route/"], PurePosixPath("tasks/route/stage.py"))
    assert not covers(["tasks/route"], PurePosixPath("tasks/router.py"))
    assert not covers(["tasks/route/stage.py"], PurePosixPath("tasks/route/serve.py"))


@pytest.mark.parametrize("stage", STAGES)
def test_every_pipeline_stage_is_a_dvc_stage_run_by_medlora(stage):
    stages = yaml_stages()
    assert stage in stages, f"flows/pipeline.py STAGES has {stage!r} but dvc.yaml has no such stage"
    assert stages[stage]["cmd"] == f"medlora stage {stage}"


@pytest.mark.parametrize("stage", STAGES)
def test_dvc_deps_cover_every_module_the_stage_imports(stage):
    deps = dvc_stage_deps(PROJECT).get(stage, [])
    missing = [str(p) for p in uncovered_modules(stage, deps, PROJECT)]
    assert not missing, (f"dvc.yaml stage {stage!r} imports {missing} but its deps do not list them; "
                         f"its code deps should be {suggested_deps(stage, PROJECT)}")


@pytest.mark.parametrize("stage", STAGES)
def test_every_code_dep_is_code_the_stage_imports(stage):
    """A listed module the stage does not import re-runs it (and all after it) for nothing."""
    modules = stage_modules(stage, PROJECT)
    unused = [d for d in code_deps(dvc_stage_deps(PROJECT).get(stage, [])) if not any(covers([d], m) for m in modules)]
    assert not unused, f"dvc.yaml stage {stage!r} lists {unused}, which its code does not import"


def test_stages_before_augment_depend_on_no_finetune_code():
    """Editing a file of tasks/finetune re-runs augment (which generates with the one inference path), finetune and
    what follows, and nothing before it (the base model's preparation lives in tasks/base_model.py for that reason)."""
    before = STAGES[:STAGES.index("augment")]
    finetune_code = {stage: [str(m) for m in stage_modules(stage, PROJECT) if str(m).startswith("tasks/finetune/")]
                     for stage in before}
    assert finetune_code == {stage: [] for stage in before}


def test_registered_models_is_written_by_register_and_read_by_route():
    stages = yaml_stages()
    register_outs = [next(iter(o)) if isinstance(o, dict) else o for o in stages["register"]["outs"]]
    assert "reports/registered_models.json" in register_outs
    assert "reports/registered_models.json" in stages["route"]["deps"]


def yaml_stages() -> dict:
    import yaml

    return yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]
