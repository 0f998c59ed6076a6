"""The promotion gate: decisions with reasons, and the aliases it moves in a real MLflow registry."""

from __future__ import annotations

import mlflow
import pytest
from mlflow import MlflowClient

from tasks.params import GateMetric, PromoteParams
from tasks.promote.gate import (data_drift_check, decide, decision_table, drift_failures, metric_drift_checks, promote,
                                rollback)

SETTINGS = PromoteParams(metrics=[GateMetric(name="perplexity", goal="min"), GateMetric(name="rouge_l", goal="max")],
                         min_approval_rate=0.8, max_critical_error_rate=0.2, min_reviewed=2)


def candidate(perplexity=20.0, rouge=0.40, critical=0.0, champion=None, version="2"):
    return {"model": "medlora-router", "version": version, "key": f"medlora-router/{version}", "scope": "all",
            "metrics": {"perplexity": perplexity, "rouge_l": rouge, "critical_error_rate": critical},
            "base_metrics": {"perplexity": 40.0, "rouge_l": 0.20, "critical_error_rate": 0.3},
            "champion": champion}


def review(approve=3, reject=0, needs_fix=0, pending=0):
    decided = approve + reject + needs_fix
    return {"items": decided + pending, "pending": pending, "approve": approve, "reject": reject, "needs_fix": needs_fix,
            "approval_rate": approve / decided if decided else None}


def failed(decision) -> dict[str, str]:
    return {c.name: c.detail for c in decision.checks if not c.passed}


def test_a_candidate_better_than_base_with_approving_reviews_and_no_champion_is_promoted():
    decision = decide(candidate(), review(), SETTINGS, current_champion=None)
    assert decision.promote, decision.reasons
    assert {c.name for c in decision.checks} >= {"perplexity vs base model", "rouge_l vs base model", "vs champion",
                                                 "approval rate", "reviews pending", "critical error rate"}


def test_a_candidate_worse_than_the_champion_is_not_promoted():
    champion = {"version": "1", "metrics": {"perplexity": 18.0, "rouge_l": 0.45}}
    decision = decide(candidate(champion=champion), review(), SETTINGS, current_champion="1")
    assert not decision.promote
    assert set(failed(decision)) == {"perplexity vs champion v1", "rouge_l vs champion v1"}
    assert "20 vs 18 (lower is better)" in failed(decision)["perplexity vs champion v1"]


def test_a_candidate_worse_than_the_base_model_is_not_promoted():
    decision = decide(candidate(perplexity=45.0), review(), SETTINGS, current_champion=None)
    assert not decision.promote and set(failed(decision)) == {"perplexity vs base model"}


def test_a_candidate_with_a_rejected_review_is_not_promoted():
    decision = decide(candidate(), review(approve=3, reject=1), SETTINGS, current_champion=None)
    assert not decision.promote
    assert set(failed(decision)) == {"approval rate"} and "1 rejected" in failed(decision)["approval rate"]


def test_pending_reviews_unreviewed_candidates_and_critical_errors_keep_a_candidate_out():
    assert set(failed(decide(candidate(), review(pending=1), SETTINGS, None))) == {"reviews pending"}
    assert set(failed(decide(candidate(), None, SETTINGS, None))) == {"review"}
    assert set(failed(decide(candidate(), review(approve=1), SETTINGS, None))) == {"reviewed"}
    assert set(failed(decide(candidate(critical=0.5), review(), SETTINGS, None))) == {"critical error rate"}


def test_a_champion_that_changed_since_the_evaluation_blocks_promotion():
    champion = {"version": "1", "metrics": {"perplexity": 30.0, "rouge_l": 0.3}}
    decision = decide(candidate(champion=champion), review(), SETTINGS, current_champion="3")
    assert not decision.promote and "run the evaluate stage again" in failed(decision)["vs champion"]


def test_the_decision_table_has_one_row_per_check():
    decision = decide(candidate(), review(), SETTINGS, None)
    table = decision_table([decision])
    assert len(table["name"]) == len(decision.checks) and all(table["passed"])


def drift_summary(blocking=False, compared="abc123.dir", reason="0 of 5 columns drifted (0%; below 20%)"):
    """reports/drift/summary.json as the drift stage writes it (the fields the gate reads)."""
    return {"status": "drift" if blocking else "no drift", "blocking": blocking, "reason": reason,
            "reference": {"model": "medlora-router", "version": "1", "data_version": compared} if compared else None}


def test_drift_in_the_incoming_notes_keeps_a_candidate_out_with_the_reports_reason():
    reason = "1 of 5 columns drifted (20%; 20% or more is drift) against ...: specialty (chisquare 1e-09, threshold 0.01)"
    drift = [data_drift_check(drift_summary(blocking=True, reason=reason), "abc123.dir")]
    decision = decide(candidate(), review(), SETTINGS, None, drift)
    assert not decision.promote and failed(decision) == {"data drift": reason}
    assert drift_failures([decision]) == [f"medlora-router/2: data drift: {reason}"]
    row = decision_table([decision])
    assert ("data drift", False) in zip(row["name"], row["passed"])
    assert decide(candidate(), review(), SETTINGS, None, [data_drift_check(drift_summary(), "abc123.dir")]).promote


def test_a_missing_or_stale_drift_report_fails_the_drift_check_and_says_what_to_run():
    assert not (missing := data_drift_check(None, None)).passed and "run the drift stage" in missing.detail
    stale = data_drift_check(drift_summary(compared="abc123.dir"), "def456.dir")
    assert not stale.passed and "data abc123.dir" in stale.detail and "now data def456.dir" in stale.detail
    assert not data_drift_check(drift_summary(compared=None), "def456.dir").passed  # compared with no champion
    assert data_drift_check(drift_summary(compared=None), None).passed
    waived = data_drift_check(drift_summary(blocking=True), "abc123.dir", block=False)
    assert waived.passed and "not blocking" in waived.detail


def test_a_candidate_much_worse_than_the_champion_was_when_promoted_is_kept_out_as_drift():
    at_promotion = {"perplexity": 16.0, "rouge_l": 0.41}
    checks = metric_drift_checks({"perplexity": 20.0, "rouge_l": 0.40}, at_promotion, "1", SETTINGS.metrics, max_drop=0.1)
    assert {c.name: c.passed for c in checks} == {"perplexity drift since champion v1": False,
                                                  "rouge_l drift since champion v1": True}
    assert "20 now vs 16" in checks[0].detail and "25.0% worse" in checks[0].detail
    assert all(c.passed for c in metric_drift_checks({"perplexity": 15.0}, at_promotion, "1", SETTINGS.metrics, 0.1))
    assert all(c.passed for c in metric_drift_checks({"perplexity": 20.0}, at_promotion, "1", SETTINGS.metrics, 0.1,
                                                     block=False))
    [none] = metric_drift_checks({"perplexity": 20.0}, {}, "1", SETTINGS.metrics, 0.1)
    assert none.passed and "no evaluation on record" in none.detail


@pytest.fixture
def registry(tmp_path):
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient()
    client.create_registered_model("medlora-router")
    for _ in range(3):
        client.create_model_version("medlora-router", source=str(tmp_path), run_id=None)
    yield client
    mlflow.set_tracking_uri(previous[0])
    mlflow.set_registry_uri(previous[1])


def champion_of(client) -> str:
    return str(client.get_model_version_by_alias("medlora-router", "champion").version)


def test_promotion_moves_champion_and_keeps_the_old_one_as_previous_and_rollback_restores_it(registry):
    promote(registry, decide(candidate(version="1"), review(), SETTINGS, None))
    assert champion_of(registry) == "1"
    champion = {"version": "1", "metrics": {"perplexity": 30.0, "rouge_l": 0.3}}
    moved = promote(registry, decide(candidate(version="2", champion=champion), review(), SETTINGS, "1"))
    assert moved == {"model": "medlora-router", "champion": "2", "previous": "1"}
    assert champion_of(registry) == "2"
    assert registry.get_model_version("medlora-router", "2").tags["promotion"] == "promote"

    worse = {"version": "2", "metrics": {"perplexity": 10.0, "rouge_l": 0.5}}
    kept = promote(registry, decide(candidate(version="3", champion=worse), review(), SETTINGS, "2"))
    assert kept["champion"] == "2" and champion_of(registry) == "2"
    assert "champion v2" in registry.get_model_version("medlora-router", "3").tags["promotion_reasons"]

    assert rollback(registry, "medlora-router") == {"model": "medlora-router", "champion": "1", "previous": "2"}
    assert champion_of(registry) == "1"
    assert str(registry.get_model_version_by_alias("medlora-router", "previous").version) == "2"


def test_rollback_without_a_previous_version_says_so(registry):
    with pytest.raises(ValueError, match="no version aliased 'previous'"):
        rollback(registry, "medlora-router")


def test_a_specialty_expert_that_does_not_beat_the_multitask_adapter_on_its_group_is_not_promoted():
    specialty = candidate() | {"scope": "cardiopulmonary", "multitask": "medlora-expert-multitask/1",
                               "multitask_metrics": {"perplexity": 18.0, "rouge_l": 0.35}}
    decision = decide(specialty, review(), SETTINGS, current_champion=None)
    assert not decision.promote
    assert set(failed(decision)) == {"perplexity vs multi-task adapter"}
    assert "20 vs 18 (lower is better)" in failed(decision)["perplexity vs multi-task adapter"]
    better = specialty | {"multitask_metrics": {"perplexity": 25.0, "rouge_l": 0.35}}
    assert decide(better, review(), SETTINGS, current_champion=None).promote
