"""One trial, one record: what caviar knows about a trial, wherever it knows it from.

The same :class:`Trial` is what the observer builds from Ray's callbacks, what the journal reads
back on resume, what the searcher hands out again as a continuation, what ranking and the
progress line compare, and what the report reads back from MLflow. Only ``run_id`` (known once
MLflow holds the trial) and how much of ``history`` is filled differ between those views.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class TrialState(StrEnum):
    """How a trial stands. A ``StrEnum``: its value is what the journal and MLflow store."""

    RUNNING = "running"
    COMPLETED = "completed"
    STOPPED_EARLY = "stopped_early"
    DIVERGED = "diverged"
    FAILED = "failed"

    @property
    def ended(self) -> bool:
        return self is not TrialState.RUNNING

    @property
    def ranked(self) -> bool:
        """Whether its objective may be compared with others' (it trained and stayed finite)."""
        return self in (TrialState.COMPLETED, TrialState.STOPPED_EARLY)


FINAL_STATES: tuple[TrialState, ...] = (
    TrialState.COMPLETED,
    TrialState.STOPPED_EARLY,
    TrialState.DIVERGED,
    TrialState.FAILED,
)
# The key of a trial's step result that holds every epoch the step trained, oldest first. A
# step may train several epochs between reports; its top-level metrics are the last epoch's,
# which is what Tune and the scheduler look at.
EPOCH_RESULTS = "epoch_results"
# A fused pack's Tune trial trains several caviar trials (``trainables.pack``). Its config
# holds ``PACK_MEMBERS``: [[index, config], ...]; each step result holds ``MEMBER_RESULTS``:
# [[index, [epoch, ...]], ...], the epochs each member trained in the step, and
# ``MEMBER_LAST``: [[index, entry], ...], every member's newest epoch (with ``"left": True``
# for a member the scheduler stopped). Lists, not dicts: Tune flattens nested dicts.
PACK_MEMBERS = "pack_members"
MEMBER_RESULTS = "member_results"
MEMBER_LAST = "member_last"
# Population-based training (scheduler kind pbt): Tune's config of a trial holds
# ``TRIAL_INDEX`` (its caviar index, which names its saved states and its decisions); each
# step result holds ``PBT_VALUES``: [[name, value], ...], the trial's current values of the
# sampled parameters (after a copy, its donor's, perturbed); and each epoch ``hp.NAME``, the
# value of each numeric sampled parameter it trained with (logged per epoch: the schedule).
TRIAL_INDEX = "_caviar_trial_index"
PBT_VALUES = "pbt_values"
HP_PREFIX = "hp."


@dataclass
class Trial:
    """One trial: its place in the sweep, its configuration, and everything it reported.

    ``history`` holds one entry per epoch, oldest first (see :func:`with_epoch`); ``checkpoint``
    is the path of its newest persisted checkpoint. ``trial_id`` is Ray's id of the trial's
    latest run (a resumed sweep runs an unfinished trial again under a new id, same ``index``;
    a pack's members share their pack's): its own id is :func:`trial_key`. Read back from
    MLflow, ``trial_id`` is that own id.
    """

    index: int
    config: dict[str, Any]
    round: int = 1
    trial_id: str = ""
    state: TrialState = TrialState.RUNNING
    history: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: str | None = None
    error: str | None = None
    node_id: str | None = None
    started_at: float | None = None  # wall-clock seconds since the epoch, as the driver saw it
    ended_at: float | None = None
    run_id: str | None = None  # its MLflow child run, when read back from MLflow
    pack: int | None = None  # trained in a fused pack: the index of the pack's first member

    @property
    def last(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}

    @property
    def epochs(self) -> int:
        return int(self.last.get("epoch", 0))

    def metric(self, name: str) -> float | None:
        """The newest epoch's value of ``name``; None when absent or not finite."""
        value = self.last.get(name)
        if value is None:
            return None
        value = float(value)
        return value if math.isfinite(value) else None

    def curve(self, name: str) -> list[tuple[int, float]]:
        """(epoch, value) of ``name`` over the trial's epochs, in epoch order."""
        return [
            (int(entry.get("epoch", 0)), float(entry[name]))
            for entry in self.history
            if entry.get(name) is not None
        ]


def member_epochs(records: Sequence[Trial]) -> tuple[int, int]:
    """(fused, alone): the epochs trained with at least one other member in the same fused
    model, and those trained as the only one (a lone trial, or a pack's last member left).
    A pack's members train in lockstep from its first epoch, so at epoch k the pack trains
    every member that reached k."""
    fused = alone = 0
    packs: dict[int, list[int]] = {}
    for record in records:
        if record.pack is None:
            alone += record.epochs
        else:
            packs.setdefault(record.pack, []).append(record.epochs)
    for epochs in packs.values():
        for epoch in range(1, max(epochs) + 1):
            training = sum(1 for reached in epochs if reached >= epoch)
            if training > 1:
                fused += training
            else:
                alone += training
    return fused, alone


def trial_key(sweep_id: str, index: int) -> str:
    """A trial's own id: its sweep's random suffix and its index (``9bb036-027``). Unique in
    its sweep and the same after ``--resume`` (a resumed trial gets a new Ray trial id, and a
    fused pack's members share their pack's); what the summary, MLflow's ``caviar.trial_id``
    and the report name a trial by."""
    return f"{sweep_id.rsplit('-', 1)[-1]}-{index:03d}"


def with_epoch(history: list[dict[str, Any]], entry: dict[str, Any]) -> list[dict[str, Any]]:
    """``history`` with ``entry`` as its newest epoch. A trial restarted from a checkpoint
    reports the epochs after it again (same values: the session resumes exactly), so an entry
    replaces the one for its epoch and any after it: one entry per epoch, in order."""
    epoch = int(entry.get("epoch", 0))
    return [e for e in history if int(e.get("epoch", 0)) < epoch] + [entry]


def classify_finished(trial: Trial, budget: int) -> TrialState:
    """How a trial that ended without an error ended: diverged, completed or stopped early."""
    return classify_last(trial.last, budget)


def classify_last(last: dict[str, Any], budget: int) -> TrialState:
    """How a trial ended, from its newest epoch: diverged, completed or stopped early."""
    if last.get("diverged"):
        return TrialState.DIVERGED
    if int(last.get("epoch", 0)) >= budget:
        return TrialState.COMPLETED
    return TrialState.STOPPED_EARLY
