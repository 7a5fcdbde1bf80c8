"""Panda sessions in MLflow, read back: where a session's folder is, and its segments.

Read-only. A panda session is a parent run tagged ``caviar.kind = panda`` with one nested run
per segment (``caviar.panda.*`` tags: segment, parent segment, start epoch, reason, who asked,
what changed, how it ended), each segment's epochs as steps on the session's epoch axis.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from orchestrator.errors import TrackingError
from orchestrator.store import layout
from orchestrator.store.uri import absolute_uri, check_reachable, tracking_uri


def _client(uri: str | None) -> tuple[MlflowClient, str]:
    uri = absolute_uri(tracking_uri(uri))
    check_reachable(uri)
    return MlflowClient(tracking_uri=uri), uri


def panda_folder(run_id: str, uri: str | None = None) -> Path | None:
    """The session folder named on panda parent run ``run_id`` (None: no such run)."""
    client, _ = _client(uri)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return None
    if run.data.tags.get(layout.KIND) != layout.PANDA:
        return None
    folder = run.data.tags.get(layout.PANDA_DIR)
    return Path(folder) if folder else None


def is_panda_run(run_id: str, uri: str | None = None) -> bool:
    client, _ = _client(uri)
    try:
        return client.get_run(run_id).data.tags.get(layout.KIND) == layout.PANDA
    except MlflowException:
        return False


@dataclass
class SegmentRun:
    """One segment as MLflow holds it."""

    index: int
    run_id: str
    parent: int | None
    start_epoch: int
    reason: str
    by: str
    changes: str
    ended_by: str
    params: dict[str, str]
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)


@dataclass
class PandaHistory:
    run_id: str
    experiment: str
    experiment_id: str
    tracking_uri: str
    name: str
    metric: str
    mode: str
    tags: dict[str, str]
    metrics: dict[str, float]
    segments: list[SegmentRun]


def read_panda(run_id: str, uri: str | None = None, metrics: tuple[str, ...] = ()) -> PandaHistory:
    """A panda session and every segment's curves (the objective and ``metrics``)."""
    client, uri = _client(uri)
    try:
        parent = client.get_run(run_id)
        if parent.data.tags.get(layout.KIND) != layout.PANDA:
            raise TrackingError(f"run {run_id} is not a panda session's parent run")
        objective = parent.data.params.get("objective", "max val_accuracy")
        mode, metric = objective.split(" ", 1)
        children = client.search_runs(
            [parent.info.experiment_id],
            filter_string=layout.children_filter(run_id),
            max_results=50_000,
        )
        segments = []
        for child in children:
            tags = child.data.tags
            parent_segment = tags.get(layout.PANDA_PARENT_SEGMENT)
            segment = SegmentRun(
                index=int(tags.get(layout.PANDA_SEGMENT, tags.get(layout.TRIAL_INDEX, "0"))),
                run_id=child.info.run_id,
                parent=int(parent_segment) if parent_segment is not None else None,
                start_epoch=int(tags.get(layout.PANDA_START_EPOCH, "0")),
                reason=tags.get(layout.PANDA_REASON, ""),
                by=tags.get(layout.PANDA_BY, ""),
                changes=tags.get(layout.PANDA_CHANGES, ""),
                ended_by=tags.get(layout.PANDA_ENDED_BY, ""),
                params=dict(child.data.params),
            )
            for name in dict.fromkeys((metric, *metrics)):
                history = client.get_metric_history(child.info.run_id, name)
                segment.curves[name] = sorted((int(m.step), float(m.value)) for m in history)
            segments.append(segment)
        experiment = client.get_experiment(parent.info.experiment_id)
    except MlflowException as error:
        raise TrackingError(f"cannot read panda run {run_id} from {uri}: {error.message}") from None
    segments.sort(key=lambda s: s.index)
    return PandaHistory(
        run_id,
        experiment.name,
        parent.info.experiment_id,
        uri,
        parent.info.run_name or run_id,
        metric,
        mode,
        dict(parent.data.tags),
        dict(parent.data.metrics),
        segments,
    )


@dataclass
class TrialRun:
    """A sweep trial as MLflow holds it: what ``caviar panda --from`` continues."""

    run_id: str
    trial_index: int
    config: dict[str, str]  # params, as strings
    sweep_id: str
    sweep_run_id: str
    experiment: str
    tracking_uri: str
    spec_filename: str
    spec_text: str


def read_trial_run(run_id: str, uri: str | None = None) -> TrialRun | None:
    """The trial run ``run_id``, or a sweep parent run's best trial; None if neither."""
    client, uri = _client(uri)
    try:
        run = client.get_run(run_id)
        if run.data.tags.get(layout.KIND) == layout.SWEEP:
            best = run.data.tags.get(layout.BEST_RUN_ID)
            if best is None:
                return None
            run = client.get_run(best)
        parent_id = run.data.tags.get(layout.PARENT_RUN)
        index = run.data.tags.get(layout.TRIAL_INDEX)
        if parent_id is None or index is None:
            return None
        parent = client.get_run(parent_id)
        if parent.data.tags.get(layout.KIND) != layout.SWEEP:
            return None
        specs = client.list_artifacts(parent_id, "spec")
        if not specs:
            return None
        text = client.download_artifacts(parent_id, specs[0].path)
        experiment = client.get_experiment(parent.info.experiment_id).name
    except MlflowException:
        return None
    return TrialRun(
        run.info.run_id,
        int(index),
        dict(run.data.params),
        parent.data.tags.get(layout.SWEEP_ID, ""),
        parent_id,
        experiment,
        uri,
        Path(specs[0].path).name,
        Path(text).read_text(encoding="utf-8"),
    )


def read_spec_artifact(run_id: str, uri: str | None = None) -> tuple[str, str]:
    """(file name, text) of the spec a sweep's parent run ``run_id`` logged."""
    client, uri = _client(uri)
    try:
        specs = client.list_artifacts(run_id, "spec")
        if not specs:
            raise TrackingError(f"sweep run {run_id} holds no spec artifact in {uri}")
        local = client.download_artifacts(run_id, specs[0].path)
    except MlflowException as error:
        raise TrackingError(f"cannot read sweep run {run_id}'s spec: {error.message}") from None
    return Path(specs[0].path).name, Path(local).read_text(encoding="utf-8")
