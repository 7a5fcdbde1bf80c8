"""Reading a sweep back from the tracking store alone, for reports (``caviar report``, and the
report at the end of a sweep): the parent, each round's region, every trial and its curve.

Read-only: nothing here writes to the store. Params come back as MLflow keeps them (strings)
and are turned back into numbers and booleans where they parse as such.
"""

from __future__ import annotations

import json
import re
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from orchestrator import speedups
from orchestrator.errors import TrackingError
from orchestrator.store import layout
from orchestrator.store.history import SweepHistory
from orchestrator.store.uri import absolute_uri, check_reachable
from orchestrator.trials import Trial, TrialState

RUN_ID_PATTERN = r"[0-9a-f]{32}"
HISTORY_CHUNK = 500  # runs per query of their metric histories: well under SQL's bound variables
# A parent run's ``caviar.kind``: a sweep, or a revisit of one (``caviar revisit``).
SWEEP, REVISIT = layout.SWEEP, layout.REVISIT


def read_sweep(
    uri: str,
    experiment_or_run: str,
    *,
    kinds: tuple[str, ...] = (SWEEP, REVISIT),
    announce: TextIO | None = None,
) -> SweepHistory:
    """Everything a report needs, from the store alone: parent, regions, trials, curves.

    ``experiment_or_run`` is a parent run id (of one of ``kinds``: a sweep or a revisit), or
    an experiment name: its newest sweep, never a revisit. A sweep found by name is named on
    ``announce`` (one line: its run id, sweep id and start), so the user sees which it took.
    """
    from orchestrator.search.ranking import rung_milestones

    uri = absolute_uri(uri)
    check_reachable(uri)
    client = MlflowClient(tracking_uri=uri)
    try:
        is_run_id = bool(re.fullmatch(RUN_ID_PATTERN, experiment_or_run))
        parent = _find_parent(client, experiment_or_run, is_run_id, kinds, announce)
        params = dict(parent.data.params)
        metric, mode = params.get(layout.OBJECTIVE_PARAM, "max val_accuracy").split(" ", 1)[::-1]
        max_epochs = int(params.get(layout.MAX_EPOCHS_PARAM, "1"))
        if params.get(layout.SCHEDULER_KIND_PARAM) == "asha":
            milestones = rung_milestones(
                int(params[layout.GRACE_PERIOD_PARAM]),
                float(params[layout.REDUCTION_FACTOR_PARAM]),
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
            pbt_lineage: list[dict[str, Any]] = []
            if params.get(layout.SCHEDULER_KIND_PARAM) == "pbt":
                try:
                    path = client.download_artifacts(
                        parent.info.run_id, layout.PBT_LINEAGE_ARTIFACT, tmp
                    )
                    pbt_lineage = json.loads(Path(path).read_text())
                except (MlflowException, OSError, ValueError):
                    pbt_lineage = []  # no generation was decided, or it is not delivered
        children = client.search_runs(
            [parent.info.experiment_id],
            filter_string=layout.children_filter(parent.info.run_id),
            max_results=50_000,
        )
        curves = metric_histories(client, [child.info.run_id for child in children], metric)
        trials = []
        for child in children:
            tags = child.data.tags
            curve = sorted((int(m.step), float(m.value)) for m in curves[child.info.run_id])
            config = {k: _parse_param(v) for k, v in child.data.params.items()}
            trials.append(
                Trial(
                    index=int(tags.get(layout.TRIAL_INDEX, "0")),
                    config=config,
                    round=int(tags.get(layout.ROUND, "1")),
                    trial_id=tags.get(layout.TRIAL_ID, child.info.run_id),
                    state=_state(tags.get(layout.OUTCOME)),
                    history=[{"epoch": epoch, metric: value} for epoch, value in curve],
                    run_id=child.info.run_id,
                    pack=int(tags[layout.PACK]) if layout.PACK in tags else None,
                )
            )
        best_so_far = sorted(
            (int(m.step), float(m.value))
            for m in client.get_metric_history(parent.info.run_id, layout.BEST_SO_FAR_METRIC)
        )
        round_starts = sorted(
            (int(m.step), int(m.value))
            for m in client.get_metric_history(parent.info.run_id, layout.ROUND_STARTED_METRIC)
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
        best_so_far=best_so_far,
        round_starts=round_starts,
        pbt_lineage=pbt_lineage,
    )


def metric_histories(client: MlflowClient, run_ids: list[str], key: str) -> dict[str, list[Any]]:
    """Each run's points of metric ``key`` (MLflow ``Metric`` s), as ``get_metric_history``
    returns them. On one of MLflow's SQL stores, one query per ``HISTORY_CHUNK`` runs (the
    store's own ``get_metric_history_bulk``, reached through a private attribute: a speed-up,
    ``orchestrator/speedups.py``); elsewhere a call per run."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    histories: dict[str, list[Any]] = {run_id: [] for run_id in run_ids}
    # private, so read only with the speed-ups on (speedups.py lists it)
    store = client._tracking_client.store if speedups.enabled() else None
    if not isinstance(store, SqlAlchemyStore):
        for run_id in run_ids:
            histories[run_id] = list(client.get_metric_history(run_id, key))
        return histories
    for first in range(0, len(run_ids), HISTORY_CHUNK):
        chunk = run_ids[first : first + HISTORY_CHUNK]
        for point in store.get_metric_history_bulk(chunk, key, max_results=2**62):
            histories[point.run_id].append(point)
    return histories


def _find_parent(
    client: MlflowClient,
    key: str,
    looks_like_run_id: bool,
    kinds: tuple[str, ...],
    announce: TextIO | None,
) -> Any:
    """The parent run ``key`` names: a run id of one of ``kinds``, or an experiment's newest
    sweep (never a revisit: it re-trains a sweep, it is not one), said on ``announce``."""
    if looks_like_run_id:
        try:
            run = client.get_run(key)
        except MlflowException:
            run = None
        if run is not None:
            kind = _kind(run)
            if kind not in kinds:
                raise TrackingError(_not_a_sweep(key, kind, run))
            return run
    experiment = client.get_experiment_by_name(key)
    if experiment is None:
        raise TrackingError(
            f"no experiment or sweep run named {key!r} in the store; "
            "pass an experiment name or a parent run id (caviar run prints both)"
        )
    # Revisits written before they had a kind of their own are tagged sweep; their
    # ``caviar.revisits`` tells them apart.
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=layout.SWEEPS_FILTER,
        order_by=["attributes.start_time DESC"],
        max_results=1000,
    )
    sweeps = [run for run in runs if _kind(run) == SWEEP]
    if not sweeps:
        raise TrackingError(f"experiment {key!r} holds no caviar sweep")
    parent = sweeps[0]
    if announce is not None:
        started = datetime.fromtimestamp(parent.info.start_time / 1000)
        print(
            f"caviar: experiment {key}: sweep run {parent.info.run_id} "
            f"({parent.data.tags.get('caviar.sweep_id', '?')}, "
            f"started {started:%Y-%m-%d %H:%M:%S})",
            file=announce,
            flush=True,
        )
    return parent


def _kind(run: Any) -> str | None:
    tags = run.data.tags
    if tags.get(layout.KIND) == SWEEP and layout.REVISITS in tags:
        return REVISIT
    return tags.get(layout.KIND)


def _not_a_sweep(key: str, kind: str | None, run: Any) -> str:
    if kind == REVISIT:
        old = run.data.tags.get(layout.REVISITS, "")
        return (
            f"run {key} is a revisit of sweep run {old}, not a sweep; revisit the sweep "
            f"itself: caviar revisit {old}"
        )
    if kind == "panda":
        return f"run {key} is a panda session, not a sweep (caviar report {key} shows it)"
    return f"run {key} is not a caviar sweep's parent run"


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
