"""What drift is measured against, found in MLflow: the training notes of the current champion, and the
metrics the champion had on the evaluation that promoted it.

Each model version carries the DVC version of the validated data it was trained on (tag `dvc_data_version`,
set by the register and route stages). Each drift run logs the features of its training split, tagged with
that data version. So the reference of a later run is the feature table of the drift run whose data version
is the champion's: derived features only, never the notes."""

from __future__ import annotations

import tempfile

import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from tasks.drift.summary import Reference
from tasks.promote.gate import CHAMPION

DATA_VERSION_TAG = "dvc_data_version"          # on model versions (tasks/register, flows/route.py)
RUN_DATA_VERSION_TAG = "medlora.data_version"  # on drift runs
STAGE_TAG, DRIFT_STAGE = "medlora.stage", "drift"
TRAIN_FEATURES = "features/train.parquet"      # artifact of each drift run
UNTRACKED = "untracked"                        # tasks/versioning.py's value when dvc.lock has no version


def champion_reference(client: MlflowClient, prefix: str) -> tuple[Reference | None, str]:
    """The newest champion under `prefix` that records its training data version, or (None, why not)."""
    champions = []
    for model in client.search_registered_models(filter_string=f"name LIKE '{prefix}-%'"):
        try:
            champions.append(client.get_model_version_by_alias(model.name, CHAMPION))
        except MlflowException:
            continue
    if not champions:
        return None, f"no model under {prefix!r} has a {CHAMPION} yet"
    tagged = [v for v in champions if v.tags.get(DATA_VERSION_TAG, UNTRACKED) != UNTRACKED]
    if not tagged:
        names = ", ".join(f"{v.name} v{v.version}" for v in champions)
        return None, f"no champion ({names}) records the data it was trained on (model version tag {DATA_VERSION_TAG})"
    newest = max(tagged, key=lambda v: (int(v.creation_timestamp or 0), v.name))
    return Reference(newest.name, str(newest.version), newest.tags[DATA_VERSION_TAG]), ""


def reference_features(client: MlflowClient, reference: Reference) -> tuple[pd.DataFrame | None, str]:
    """The training features logged for the champion's data version (newest drift run), or (None, why not).
    Fills in `reference.run_id` and `reference.notes`."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, f"tags.`{STAGE_TAG}` = '{DRIFT_STAGE}' and "
                                           f"tags.`{RUN_DATA_VERSION_TAG}` = '{reference.data_version}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        return None, (f"no drift run logged the features of the data {reference.model} v{reference.version} was trained "
                      f"on ({reference.data_version[:12]}); the next champion's will be")
    run_id = runs[0].info.run_id
    with tempfile.TemporaryDirectory() as scratch:
        try:
            path = client.download_artifacts(run_id, TRAIN_FEATURES, scratch)
        except (MlflowException, OSError) as error:
            return None, f"drift run {run_id} has no readable {TRAIN_FEATURES} ({error})"
        features = pd.read_parquet(path)
    reference.run_id, reference.notes = run_id, len(features)
    return features, ""


def champion_metrics_at_promotion(client: MlflowClient, model: str, version: str) -> tuple[dict[str, float], str | None]:
    """The champion's metrics on the evaluation that made it a candidate last (the one that promoted it), and
    that evaluation's run id; ({}, None) when it has none (registered by hand, or its run is gone)."""
    try:
        run_id = client.get_model_version(model, version).tags.get("evaluation_run")
        if not run_id:
            return {}, None
        metrics = client.get_run(run_id).data.metrics
    except MlflowException:
        return {}, None
    prefix = f"{model}/{version}/"
    return {k.removeprefix(prefix): v for k, v in metrics.items() if k.startswith(prefix)}, run_id
