"""What every step of one sweep's run works from (:class:`Sweep`), and what they all ask of it:
its trials' records, its rung milestones, where its workers find the trainable."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from orchestrator.engine import live
from orchestrator.search.ranking import rung_milestones
from orchestrator.spec import AshaScheduler, SweepSpec
from orchestrator.store.tracking import SweepTracker
from orchestrator.trials import Trial
from trainables import DataSplits

MEMBERS_DIR = "members"  # a stopped pack member's state, saved as it leaves its pack
TIMEOUTS_DIR = "timeouts"  # notes of the trials whose epoch ran past epoch_timeout_s


@dataclass(frozen=True)
class Sweep:
    """What every step of one sweep's run works from."""

    spec: SweepSpec
    data: DataSplits
    tracker: SweepTracker
    run_dir: Path
    sweep_id: str
    stream: TextIO
    resume: bool
    spec_dir: Path | None = None


def records(sweep_id: str) -> list[Trial]:
    """The live observer's trials, by index (none if the sweep never reached Tune)."""
    found = live.lookup(sweep_id)
    if found is None or found.observer is None:
        return []
    return sorted(found.observer.records.values(), key=lambda r: r.index)


def milestones(spec: SweepSpec) -> list[int]:
    """The epochs a trial is ranked at: ASHA's rungs, else the budget alone."""
    if isinstance(spec.scheduler, AshaScheduler):
        return rung_milestones(
            spec.scheduler.grace_period, spec.scheduler.reduction_factor, spec.max_epochs
        )
    return [spec.max_epochs]


def trainable_path(sweep: Sweep) -> tuple[str, ...]:
    """Where trial workers look for a trainable named by import path: the spec's folder (on
    this machine; a job's workers also find it in their working directory)."""
    return (str(sweep.spec_dir.resolve()),) if sweep.spec_dir is not None else ()
