"""A panda session's segments and how they branch: which epochs the current model came from.

A *segment* is the training between two changes: it starts from a checkpoint (epoch
``start_epoch`` of its parent segment, or the session's first state) with one configuration,
and ends at the next adjustment, rewind, stop or the epoch budget. An adjustment starts a new
segment where the last one ended; a rewind starts one at an earlier epoch of the current
branch, and the abandoned epochs stay in their segment (in the journal and in MLflow).

Epochs are numbered on one axis for the whole session: a model's epoch count, so every branch
plots against the same x. The *branch* is the path from the first segment to the current one;
on it each epoch belongs to exactly one segment (the newest on the path that trained it).

Each segment is a :class:`~orchestrator.trials.Trial` (index = segment number), the record a
sweep's trial uses, with the lineage beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from orchestrator.trials import Trial


@dataclass
class Segment:
    """One segment: its trial record plus where it branched from and why."""

    trial: Trial
    parent: int | None  # the segment it continues (None: the session's first)
    start_epoch: int  # the epoch of the checkpoint it starts from
    reason: str  # start | continue | adjust | rewind
    by: str  # who asked: "user", "rule:<name>", or "caviar" for the start
    changes: dict[str, Any] = field(default_factory=dict)
    ended_by: str | None = None  # adjust | rewind | budget | stop | rule:stop | diverged | ...

    @property
    def index(self) -> int:
        return self.trial.index

    @property
    def config(self) -> dict[str, Any]:
        return self.trial.config

    @property
    def last_epoch(self) -> int:
        """The newest epoch it trained (its start epoch until it trains one)."""
        return max(self.start_epoch, self.trial.epochs)


@dataclass
class Pause:
    """A pause of the session: at which epoch, who asked, for how long (None while it lasts)."""

    epoch: int
    by: str
    seconds: float | None = None


class Lineage:
    """Every segment of a session by index, and which one trains now (the newest)."""

    def __init__(self) -> None:
        self.segments: dict[int, Segment] = {}

    def add(self, segment: Segment) -> None:
        if segment.index in self.segments:
            raise ValueError(f"segment {segment.index} exists")
        if segment.parent is not None and segment.parent not in self.segments:
            raise ValueError(f"segment {segment.index}'s parent {segment.parent} is unknown")
        self.segments[segment.index] = segment

    @property
    def current(self) -> Segment:
        return self.segments[max(self.segments)]

    @property
    def root(self) -> Segment:
        return self.segments[min(self.segments)]

    @property
    def epoch(self) -> int:
        """The current model's epoch."""
        return self.current.last_epoch

    def path(self) -> list[tuple[Segment, int]]:
        """The branch, first segment first: each segment with the last epoch it owns on it."""
        steps: list[tuple[Segment, int]] = []
        segment, upper = self.current, self.current.last_epoch
        while True:
            steps.append((segment, upper))
            if segment.parent is None:
                break
            segment, upper = self.segments[segment.parent], segment.start_epoch
        return steps[::-1]

    def branch(self) -> list[dict[str, Any]]:
        """Every epoch's result on the current branch, oldest first (one per epoch)."""
        entries: list[dict[str, Any]] = []
        for segment, upper in self.path():
            entries += [
                e for e in segment.trial.history if segment.start_epoch < int(e["epoch"]) <= upper
            ]
        return entries

    def owner(self, epoch: int) -> Segment:
        """The segment whose checkpoint of ``epoch`` the branch holds (ValueError if none:
        before the session's start or after the current epoch)."""
        if epoch > self.epoch:
            raise ValueError(f"epoch {epoch} is ahead of the model (epoch {self.epoch})")
        for segment, upper in reversed(self.path()):
            if segment.start_epoch < epoch <= upper or (
                segment.parent is None and epoch == segment.start_epoch
            ):
                return segment
        start = self.root.start_epoch
        raise ValueError(f"epoch {epoch} is before the session's start (epoch {start})")

    def checkpoint_keys(self) -> list[tuple[int, int]]:
        """(segment, epoch) of every checkpoint the branch could hold, oldest first: its first
        state and each epoch trained on it."""
        root = self.root
        keys = [(root.index, root.start_epoch)]
        for segment, upper in self.path():
            keys += [(segment.index, e) for e in range(segment.start_epoch + 1, upper + 1)]
        return keys
