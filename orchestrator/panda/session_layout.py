"""How a panda session appears in MLflow: each segment's tags (its place in the lineage), each
epoch's metrics, and the parent's tag of pauses. Also what a revisit logs per epoch."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from orchestrator.panda.lineage import Lineage, Pause, Segment
from orchestrator.store import layout

if TYPE_CHECKING:  # neither torch nor MLflow to read a session back (`caviar panda adjust`)
    from orchestrator.store.tracking import SweepTracker

# Result keys that are not metrics (the observer's rule: numbers only, the epoch is the step).
NOT_METRICS = frozenset({"epoch", "diverged", "ended_at", "worker_pid"})
PAUSES_TAGGED = 40  # the newest pauses in the parent run's tag (MLflow bounds a tag's length)


def pauses_tag(pauses: list[Pause]) -> str:
    """The newest pauses as JSON (epoch, by, seconds; null while one lasts)."""
    return json.dumps(
        [{"epoch": p.epoch, "by": p.by, "seconds": p.seconds} for p in pauses[-PAUSES_TAGGED:]],
        separators=(",", ":"),
    )


def segment_tags(segment: Segment, tracker: SweepTracker, lineage: Lineage) -> dict[str, str]:
    """A segment's MLflow tags: its place in the lineage (parent segment, start epoch), why it
    exists and who asked."""
    tags = {
        layout.TRIAL_INDEX: str(segment.index),
        layout.TRIAL_ID: segment.trial.trial_id,
        layout.PANDA_SEGMENT: str(segment.index),
        layout.PANDA_START_EPOCH: str(segment.start_epoch),
        layout.PANDA_REASON: segment.reason,
        layout.PANDA_BY: segment.by,
    }
    if segment.changes:
        tags[layout.PANDA_CHANGES] = json.dumps(segment.changes, sort_keys=True)
    if segment.parent is not None:
        tags[layout.PANDA_PARENT_SEGMENT] = str(segment.parent)
        parent_run = tracker.child_run_id(str(segment.parent))
        if parent_run:
            tags[layout.PANDA_PARENT_RUN_ID] = parent_run
    return tags


def epoch_metrics(result: dict[str, Any]) -> dict[str, float]:
    """An epoch's result as MLflow metrics: finite numbers, not the epoch (the step)."""
    return {
        k: float(v)
        for k, v in result.items()
        if k not in NOT_METRICS
        and isinstance(v, (int, float))
        and not isinstance(v, bool)
        and math.isfinite(float(v))
    }
