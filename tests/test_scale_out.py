"""Expert training fanned out on a Dask LocalCluster gives the adapters that sequential training gives;
the retrain flow trains one named expert and refuses a name params.yaml does not train."""

from __future__ import annotations

import copy
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tasks.params import MULTITASK_EXPERT, apply_overrides, load_params

from .conftest import PROJECT, _venv_env, make_project

ADAPTER_FILE = "adapter_model.safetensors"


@pytest.fixture(scope="module")
def validated_project(tmp_path_factory, prefect_api) -> Path:
    """The tiny project run up to augment (which adds nothing here); specialty experts start from the multi-task adapter, one torch thread each."""
    from flows.pipeline import run_stage

    project = make_project(tmp_path_factory.mktemp("scale-out"),
                           overrides={"finetune": {"threads": 1, "specialise_from_multitask": True},
                                      "augment": {"min_train_notes": 0}})
    for stage in ("corpus", "prepare_base", "ingest", "deidentify", "validate", "augment"):
        run_stage(stage, project)
    return project


def adapter_tensors(adapters: Path) -> dict[str, dict]:
    return {d.name: load_file(d / ADAPTER_FILE) for d in sorted(adapters.iterdir()) if (d / ADAPTER_FILE).exists()}


def test_dask_local_cluster_of_two_workers_trains_the_same_adapters_as_sequential_training(validated_project):
    import torch

    from flows.finetune import finetune_flow
    from tasks.layout import ADAPTERS_DIR

    project = validated_project
    experts = load_params(project).trained_experts()
    sequential = finetune_flow(root=str(project))
    assert sequential.metrics["engine"] == "none" and sequential.metrics["workers"] == 1
    before = adapter_tensors(project / ADAPTERS_DIR)
    shutil.rmtree(project / ADAPTERS_DIR)

    apply_overrides(project, assignments=["finetune.scale_out.engine=dask", "finetune.scale_out.workers=2",
                                          "finetune.scale_out.threads_per_worker=1"])
    # `medlora stage finetune`, as `dvc repro` runs it: in a fresh process, whose Dask workers inherit nothing from
    # this long-lived test process (in the full suite, workers spawned from it died and the futures hung)
    from prefect.settings import PREFECT_API_URL

    stage = subprocess.run([str(Path(sys.executable).parent / "medlora"), "--root", str(project), "stage", "finetune"],
                           cwd=project, env=_venv_env() | {"PREFECT_API_URL": PREFECT_API_URL.value()},
                           capture_output=True, text=True, timeout=600)
    assert stage.returncode == 0, stage.stderr[-4000:]
    fanned_out = json.loads((project / "reports" / "finetune.json").read_text())
    after = adapter_tensors(project / ADAPTERS_DIR)

    assert fanned_out["metrics"]["engine"] == "dask"
    assert fanned_out["metrics"]["workers"] == 2  # distinct processes trained: the two Dask workers
    assert set(before) == set(after) == {e for e in experts if e != "pubmedqa"}  # no PubMedQA file in this project
    for expert, tensors in before.items():
        assert tensors.keys() == after[expert].keys()
        assert all(torch.equal(tensors[name], after[expert][name]) for name in tensors), expert
        assert json.loads((project / ADAPTERS_DIR / expert / "training.json").read_text())["threads"] == 1


def test_retrain_flow_names_the_valid_experts_for_an_unknown_one_and_retrains_a_known_one(validated_project):
    from flows.finetune import retrain_expert_flow
    from tasks.layout import ADAPTERS_DIR

    project = validated_project
    with pytest.raises(ValueError) as error:
        retrain_expert_flow(root=str(project), expert="cardiology")
    message = str(error.value)
    assert "unknown expert 'cardiology'" in message and "orthopedic" in message and MULTITASK_EXPERT in message

    adapters = project / ADAPTERS_DIR
    if not (adapters / MULTITASK_EXPERT / ADAPTER_FILE).exists():  # run alone, without the test above
        retrain_expert_flow(root=str(project), expert=MULTITASK_EXPERT)
    others = {d.name: (d / ADAPTER_FILE).stat().st_mtime_ns for d in adapters.iterdir() if d.name != "orthopedic"}
    shutil.rmtree(adapters / "orthopedic", ignore_errors=True)
    result = retrain_expert_flow(root=str(project), expert="orthopedic")
    assert result["expert"] == "orthopedic" and result["steps"] >= 1
    assert (adapters / "orthopedic" / ADAPTER_FILE).exists()
    assert {d.name: (d / ADAPTER_FILE).stat().st_mtime_ns for d in adapters.iterdir() if d.name != "orthopedic"} == others
    if (project / "reports" / "finetune.json").exists():  # the stage ran here: dvc.lock records the new adapter
        status = subprocess.run([str(Path(sys.executable).parent / "dvc"), "status", "finetune"], cwd=project,
                                capture_output=True, text=True, check=True)
        assert "changed outs" not in status.stdout, status.stdout


def test_the_kubernetes_job_template_is_accepted_by_prefect_and_renders_a_job(prefect_api):
    """What the Prefect server checks when `prefect work-pool create --type kubernetes --base-job-template` sends it:
    every placeholder is a declared variable and every default fits the variables' JSON schema."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import PrefectHTTPStatusError
    from prefect.utilities.templating import apply_values

    template = json.loads((PROJECT / "deploy" / "kubernetes-job-template.json").read_text())
    with get_client(sync_client=True) as client:
        pool = client.create_work_pool(WorkPoolCreate(name="medlora-k8s-test", type="kubernetes", base_job_template=template),
                                       overwrite=True)
        assert pool.base_job_template == template
        wrong = copy.deepcopy(template)
        wrong["variables"]["properties"]["cpu_request"]["default"] = 2  # Kubernetes quantities are strings here
        with pytest.raises(PrefectHTTPStatusError, match="422"):
            client.create_work_pool(WorkPoolCreate(name="medlora-k8s-wrong", type="kubernetes", base_job_template=wrong))

    variables = template["variables"]["properties"]
    defaults = {name: spec["default"] for name, spec in variables.items() if "default" in spec}
    job = apply_values(template["job_configuration"], defaults | {"image": "registry.example.org/medlora:1"})
    container = job["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example.org/medlora:1"
    assert container["resources"]["requests"]["cpu"] == defaults["cpu_request"]
    assert container["volumeMounts"][0]["mountPath"] == defaults["project_path"]


def test_a_scheduler_address_and_a_cluster_class_together_are_refused():
    from tasks.params import ScaleOutParams

    with pytest.raises(ValueError, match="not both"):
        ScaleOutParams(engine="dask", address="tcp://scheduler:8786", cluster_class="dask_kubernetes.operator.KubeCluster")


def test_ray_without_prefect_ray_says_what_to_install():
    from flows.finetune import scale_out_task_runner
    from tasks.params import ScaleOutParams

    if importlib.util.find_spec("prefect_ray") is not None:
        pytest.skip("prefect-ray is installed")
    with pytest.raises(ImportError, match="pip install prefect-ray"):
        scale_out_task_runner(ScaleOutParams(engine="ray", workers=1, threads_per_worker=1))
