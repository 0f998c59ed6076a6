import pytest
import yaml

from flows.cli import main
from tasks.params import load_params

from .conftest import PROJECT


def test_shipped_params_are_valid_and_group_mtsamples_specialties():
    params = load_params(PROJECT)
    mapping = params.expert_for_specialty()
    assert mapping["neurosurgery"] == "neuro" and mapping["nephrology"] == "renal_uro"
    assert params.uses_sample_corpus()


@pytest.mark.parametrize("preset", sorted(p.stem for p in (PROJECT / "presets").glob("*.yaml")))
def test_each_preset_merges_into_valid_params(preset):
    params = load_params(PROJECT, yaml.safe_load((PROJECT / "presets" / f"{preset}.yaml").read_text()))
    for expert in params.trained_experts():
        assert params.finetune.for_expert(expert).max_steps >= 1


def test_an_unknown_override_names_its_place():
    with pytest.raises(ValueError, match=r"finetune.task_experts.pubmedqa.overrides is not valid"):
        load_params(PROJECT, {"finetune": {"task_experts": {"pubmedqa": {"overrides": {"max_stepz": 3}}}}}).finetune.for_expert("pubmedqa")


def test_specialty_in_two_experts_is_refused(tmp_path):
    raw = yaml.safe_load((PROJECT / "params.yaml").read_text())
    raw["experts"]["neuro"].append("Orthopedic")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match="specialty 'Orthopedic' is in experts"):
        load_params(tmp_path)


def test_unknown_key_and_bad_split_name_the_file(tmp_path):
    raw = yaml.safe_load((PROJECT / "params.yaml").read_text())
    raw["validate"]["split"] = {"train": 0.9, "val": 0.2, "test": 0.1}
    raw["finetune"]["learning_rte"] = 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError) as error:
        load_params(tmp_path)
    assert str(tmp_path / "params.yaml") in str(error.value)
    assert "learning_rte" in str(error.value) and "add up to 1" in str(error.value)


def test_cli_outside_a_project_says_where_params_are_expected(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--root", str(tmp_path), "run"])
    assert "params.yaml not found" in capsys.readouterr().err


def test_specialising_from_the_multitask_adapter_needs_one():
    with pytest.raises(ValueError, match="specialise_from_multitask needs finetune.multitask_expert"):
        load_params(PROJECT, {"finetune": {"specialise_from_multitask": True, "multitask_expert": False}})


def test_a_composed_expert_may_not_take_a_trained_experts_name_or_specialty():
    with pytest.raises(ValueError, match="route.compose.specialties.orthopedic has the name of an expert"):
        load_params(PROJECT, {"route": {"compose": {"specialties": {"orthopedic": ["ENT - Otolaryngology"]}}}})
    with pytest.raises(ValueError, match="specialty 'Urology' is in experts 'renal_uro' and 'kidney'"):
        load_params(PROJECT, {"route": {"compose": {"specialties": {"kidney": ["Urology"]}}}})
