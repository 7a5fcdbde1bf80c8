"""Reading a sweep back from the tracking store alone, for reports (``caviar report``, and the
report at the end of a sweep): the parent, each round's region, every trial and its curve.

Read-only: nothing here writes to the store. Params come back as MLflow keeps them (strings)
and are turned back into numbers and booleans where they parse as such.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from orchestrator.errors import TrackingError
from orchestrator.store.history import SweepHistory
from orchestrator.store.uri import absolute_uri, check_reachable
from orchestrator.trials import Trial, TrialState

RUN_ID_PATTERN = r"[0-9a-f]{32}"


def read_sweep(uri: str, experiment_or_run: str) -> SweepHistory:
    """Everything a report needs, from the store alone: parent, regions, trials, curves.

    ``experiment_or_run`` is a parent run id, or an experiment name (its latest sweep).
    """
    from orchestrator.search.ranking import rung_milestones

    uri = absolute_uri(uri)
    check_reachable(uri)
    client = MlflowClient(tracking_uri=uri)
    try:
        is_run_id = bool(re.fullmatch(RUN_ID_PATTERN, experiment_or_run))
        parent = _find_parent(client, experiment_or_run, is_run_id)
        params = dict(parent.data.params)
        metric, mode = params.get("objective", "max val_accuracy").split(" ", 1)[::-1]
        max_epochs = int(params.get("scheduler.max_epochs", "1"))
        if params.get("scheduler.kind") == "asha":
            milestones = rung_milestones(
                int(params["scheduler.grace_period"]),
                float(params["scheduler.reduction_factor"]),
                max_epochs,
            )
        else:
            milestones = [max_epochs]
        regions: list[dict[str, Any]] = []
        with tempfile.TemporaryDirectory() as tmp:
            try:
                local = client.download_artifacts(parent.info.run_id, "regions", tmp)
                files = sorted(
                    Path(local).glob("round_*.json"), key=lambda p: int(p.stem.split("_")[1])
                )
                regions = [json.loads(f.read_text()) for f in files]
            except (MlflowException, OSError):
                regions = []
        children = client.search_runs(
            [parent.info.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
            max_results=50_000,
        )
        trials = []
        for child in children:
            tags = child.data.tags
            history = client.get_metric_history(child.info.run_id, metric)
            curve = sorted((int(m.step), float(m.value)) for m in history)
            config = {k: _parse_param(v) for k, v in child.data.params.items()}
            trials.append(
                Trial(
                    index=int(tags.get("caviar.trial_index", "0")),
                    config=config,
                    round=int(tags.get("caviar.round", "1")),
                    trial_id=tags.get("caviar.trial_id", child.info.run_id),
                    state=_state(tags.get("caviar.outcome")),
                    history=[{"epoch": epoch, metric: value} for epoch, value in curve],
                    run_id=child.info.run_id,
                    pack=int(tags["caviar.pack"]) if "caviar.pack" in tags else None,
                )
            )
    except MlflowException as error:
        raise TrackingError(f"cannot read the sweep from {uri}: {error.message}") from None
    trials.sort(key=lambda t: t.index)
    experiment = client.get_experiment(parent.info.experiment_id)
    return SweepHistory(
        name=experiment.name,
        experiment_id=parent.info.experiment_id,
        parent_run_id=parent.info.run_id,
        tracking_uri=uri,
        metric=metric,
        mode=mode,
        milestones=milestones,
        regions=regions,
        trials=trials,
        params=params,
        metrics=dict(parent.data.metrics),
    )


def _find_parent(client: MlflowClient, key: str, looks_like_run_id: bool) -> Any:
    if looks_like_run_id:
        try:
            run = client.get_run(key)
        except MlflowException:
            run = None
        if run is not None:
            if run.data.tags.get("caviar.kind") != "sweep":
                raise TrackingError(f"run {key} is not a caviar sweep's parent run")
            return run
    experiment = client.get_experiment_by_name(key)
    if experiment is None:
        raise TrackingError(
            f"no experiment or sweep run named {key!r} in the store; "
            "pass an experiment name or a parent run id (caviar run prints both)"
        )
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string="tags.`caviar.kind` = 'sweep'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        raise TrackingError(f"experiment {key!r} holds no caviar sweep")
    return runs[0]


def _state(outcome: str | None) -> TrialState:
    """A child run's ``caviar.outcome`` tag; one not (yet) set is a trial still running."""
    try:
        return TrialState(outcome or "running")
    except ValueError:
        return TrialState.RUNNING


def _parse_param(text: str) -> Any:
    """Params come back as strings; recover numbers and booleans for plotting."""
    if text in ("True", "False"):
        return text == "True"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text
