"""The promotion gate: an explicit decision, with its reasons, on whether a candidate becomes `champion`.

A candidate passes when, on every configured metric its held-out data has, it beats the base model and
its model's current champion (both scored on the same requests in the same evaluation); reviewers
approved enough of its sampled outputs; its critical error rate is low enough; no review is pending; and
nothing drifted: the incoming notes against the champion's training notes (the drift stage's report), and the
candidate's metrics against the champion's on the evaluation that promoted it.
Promotion moves the alias `champion` to it and the alias `previous` to the champion it replaces;
rollback swaps them back."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from tasks.params import GateMetric, PromoteParams

CHAMPION, PREVIOUS = "champion", "previous"
DATA_DRIFT = "data drift"


def alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


@dataclass
class Check:
    name: str
    passed: bool
    detail: str
    drift: bool = False  # a drift check: failing it leaves the promotion run in the state Attention


@dataclass
class Decision:
    model: str
    version: str
    promote: bool
    checks: list[Check] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.model}/{self.version}"

    @property
    def reasons(self) -> str:
        failed = [c for c in self.checks if not c.passed]
        return "; ".join(f"{c.name}: {c.detail}" for c in (failed or self.checks))

    def as_row(self) -> dict:
        return {"model": self.model, "version": self.version, "decision": "promote" if self.promote else "keep out",
                "reasons": self.reasons}


def _beats(metric: GateMetric, candidate: float, reference: float) -> bool:
    gain = reference - candidate if metric.goal == "min" else candidate - reference
    return gain > metric.min_gain


def metric_checks(metrics: dict, reference: dict, against: str, configured: list[GateMetric]) -> list[Check]:
    checks = []
    for metric in configured:
        if metric.name not in metrics:
            continue
        if metric.name not in reference:
            checks.append(Check(f"{metric.name} vs {against}", False, f"{against} has no {metric.name} on these requests"))
            continue
        ours, theirs = metrics[metric.name], reference[metric.name]
        better = "lower" if metric.goal == "min" else "higher"
        passed = _beats(metric, ours, theirs)
        margin = f" by more than {metric.min_gain}" if metric.min_gain else ""
        checks.append(Check(f"{metric.name} vs {against}", passed,
                            f"{ours:.4g} vs {theirs:.4g} ({better} is better{margin})"))
    return checks


def _data_named(version: str | None) -> str:
    return f"data {version[:12]}" if version else "no champion"


def data_drift_check(summary: dict | None, champion_data: str | None, block: bool = True) -> Check:
    """The drift stage's verdict (reports/drift/summary.json) as a check. `champion_data`: the data version the
    current champion was trained on (None without one), which the report must have compared with."""
    if summary is None:
        return Check(DATA_DRIFT, False, "no drift report (reports/drift/summary.json): run the drift stage "
                                        "(medlora stage drift, or the `drift check` deployment)", drift=True)
    compared = (summary.get("reference") or {}).get("data_version")
    if compared != champion_data:
        return Check(DATA_DRIFT, False, f"the drift report compared the notes with {_data_named(compared)}, but the champion's "
                                        f"training data is now {_data_named(champion_data)}: run the drift stage again", drift=True)
    if summary["blocking"] and not block:
        return Check(DATA_DRIFT, True, f"{summary['reason']} (not blocking: drift.block_promotion is false)", drift=True)
    return Check(DATA_DRIFT, not summary["blocking"], summary["reason"], drift=True)


def metric_drift_checks(metrics: dict, at_promotion: dict, champion: str, configured: list[GateMetric],
                        max_drop: float, block: bool = True) -> list[Check]:
    """Each gate metric of the candidate against the champion's on the evaluation that promoted it: worse by more
    than `max_drop` (relative) means the notes or the models drifted since, even if the candidate beats the
    champion on today's requests."""
    if not at_promotion:
        return [Check(f"metric drift since champion v{champion}", True,
                      "the champion has no evaluation on record to compare with", drift=True)]
    checks = []
    for metric in configured:
        if metric.name not in metrics or metric.name not in at_promotion:
            continue
        ours, then = metrics[metric.name], at_promotion[metric.name]
        worse = ours - then if metric.goal == "min" else then - ours
        drop = worse / abs(then) if then else (0.0 if worse <= 0 else float("inf"))
        change = f"{drop:.1%} worse" if drop > 0 else f"{-drop:.1%} better"
        passed = drop <= max_drop or not block
        note = "" if drop <= max_drop or block else " (not blocking: drift.block_promotion is false)"
        checks.append(Check(f"{metric.name} drift since champion v{champion}", passed,
                            f"{ours:.4g} now vs {then:.4g} on the evaluation that promoted the champion "
                            f"({change}; at most {max_drop:.0%} worse){note}", drift=True))
    return checks


def decide(candidate: dict, review: dict | None, settings: PromoteParams, current_champion: str | None,
           drift: list[Check] | None = None) -> Decision:
    """`candidate`: one entry of the evaluation's candidates; `review`: its row of the review summary; `drift`:
    the drift checks (data_drift_check, metric_drift_checks) that apply to it."""
    decision = Decision(candidate["model"], candidate["version"], False)
    checks = decision.checks
    if "skipped" in candidate:
        checks.append(Check("evaluation", False, candidate["skipped"]))
        return decision
    metrics = candidate["metrics"]
    checks += metric_checks(metrics, candidate["base_metrics"], "base model", settings.metrics)
    if not any(c.name.endswith("vs base model") for c in checks):
        checks.append(Check("metrics", False, "none of the configured gate metrics was measured for this candidate"))
    if "multitask_metrics" in candidate:  # a specialty expert must also beat the multi-task adapter on its group
        checks += metric_checks(metrics, candidate["multitask_metrics"], "multi-task adapter", settings.metrics)
    evaluated_champion = (candidate.get("champion") or {}).get("version")
    if current_champion is None:
        checks.append(Check("vs champion", True, "no current champion"))
    elif evaluated_champion != current_champion:
        checks.append(Check("vs champion", False, f"the champion is now version {current_champion}, but the evaluation "
                                                  f"compared with {evaluated_champion}: run the evaluate stage again"))
    else:
        checks += metric_checks(metrics, candidate["champion"]["metrics"], f"champion v{current_champion}", settings.metrics)
    rate = metrics.get("critical_error_rate", 0.0)
    checks.append(Check("critical error rate", rate <= settings.max_critical_error_rate,
                        f"{rate:.1%} (at most {settings.max_critical_error_rate:.1%})"))
    if review is None:
        checks.append(Check("review", False, "no outputs of this candidate are in the review queue"))
    else:
        decided = review["items"] - review["pending"]
        checks.append(Check("reviews pending", review["pending"] == 0, f"{review['pending']} of {review['items']} pending"))
        checks.append(Check("reviewed", decided >= settings.min_reviewed, f"{decided} decided (at least {settings.min_reviewed})"))
        approval = review["approval_rate"]
        checks.append(Check("approval rate", approval is not None and approval >= settings.min_approval_rate,
                            f"{'none decided' if approval is None else f'{approval:.0%}'} "
                            f"(at least {settings.min_approval_rate:.0%}; {review['reject']} rejected, {review['needs_fix']} need fixes)"))
    checks += drift or []
    decision.promote = all(c.passed for c in checks)
    return decision


def drift_failures(decisions: list[Decision]) -> list[str]:
    """'model/version: check: detail' for every failed drift check: what puts a promotion run in Attention."""
    return [f"{d.key}: {c.name}: {c.detail}" for d in decisions for c in d.checks if c.drift and not c.passed]


def promote(client: MlflowClient, decision: Decision) -> dict:
    """Move `champion` to the candidate and `previous` to the champion it replaces; tag the version with the decision."""
    old = alias_version(client, decision.model, CHAMPION)
    client.set_model_version_tag(decision.model, decision.version, "promotion", "promote" if decision.promote else "keep out")
    client.set_model_version_tag(decision.model, decision.version, "promotion_reasons", decision.reasons[:5000])
    if not decision.promote:
        return {"model": decision.model, "champion": old, "previous": alias_version(client, decision.model, PREVIOUS)}
    client.set_registered_model_alias(decision.model, CHAMPION, decision.version)
    if old is not None and old != decision.version:
        client.set_registered_model_alias(decision.model, PREVIOUS, old)
    return {"model": decision.model, "champion": decision.version, "previous": old}


def rollback(client: MlflowClient, model: str) -> dict:
    """Give `champion` back to the version aliased `previous`; the demoted one becomes `previous`
    (so a second rollback undoes the first)."""
    previous = alias_version(client, model, PREVIOUS)
    if previous is None:
        raise ValueError(f"{model} has no version aliased {PREVIOUS!r}: nothing to roll back to")
    current = alias_version(client, model, CHAMPION)
    client.set_registered_model_alias(model, CHAMPION, previous)
    if current is not None:
        client.set_registered_model_alias(model, PREVIOUS, current)
        client.set_model_version_tag(model, current, "promotion", f"rolled back to version {previous}")
    return {"model": model, "champion": previous, "previous": current}


def decision_table(decisions: list[Decision]) -> dict[str, list]:
    """One row per check of every decision: what MLflow logs as the decision table."""
    rows = [{"model": d.model, "version": d.version, "promoted": d.promote, **asdict(c)} for d in decisions for c in d.checks]
    return {column: [row[column] for row in rows] for column in ("model", "version", "promoted", "name", "passed", "detail")}
