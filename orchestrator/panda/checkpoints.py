"""A panda session's per-epoch checkpoints on the driver's disk, bounded by ``panda.keep``,
``panda.keep_for`` and ``panda.keep_max_mb``.

Each checkpoint is the bytes a trainer's ``snapshot`` returned (the session's ``state_dict``
and its config, saved by torch), in ``checkpoints/s<segment>-e<epoch>.pt``. A file appears
whole or not at all (written beside, then renamed), so a killed session never leaves half a
checkpoint for its resume. After each epoch the current branch's checkpoints a rewind may
want are kept and every other file is removed: the newest ``keep`` epochs, and every epoch
saved within ``keep_for`` seconds of the session's training clock before the newest (a person
reads at their own pace: a model at 50 epochs a second must not outrun them), newest first
while those extra files fit in ``keep_max_bytes``. The clock is the session's: time paused
does not age a checkpoint. What is kept is always the newest stretch of the branch. An
abandoned branch keeps its curves (journal, MLflow), not its weights.

A rewind asked from another shell pins its checkpoint (``pins/<command id>``) when it is checked,
under the same file lock as pruning: a checkpoint that passed the check is still there when the
session reads the command, however many epochs it trains in between. The session unpins a
command once it has answered it; a pin whose command never arrived lapses after ``PIN_TTL_S``.
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.panda.changes import PandaError

if TYPE_CHECKING:
    from orchestrator.panda.lineage import Lineage, Segment
    from orchestrator.spec.panda import PandaSpec

_NAME = re.compile(r"^s(\d+)-e(\d+)\.pt$")
PIN_TTL_S = 600.0


class CheckpointStore:
    def __init__(
        self,
        folder: Path,
        keep: int,
        keep_for: float = 0.0,
        keep_max_bytes: float = float("inf"),
    ) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.folder = folder
        self.keep = keep
        self.keep_for = keep_for
        self.keep_max_bytes = keep_max_bytes

    @classmethod
    def for_spec(cls, folder: Path, panda: PandaSpec) -> CheckpointStore:
        return cls(folder, panda.keep, panda.keep_for, panda.keep_max_mb * 1e6)

    def budget(self) -> str:
        """The rule, as the spec says it (for a refused rewind)."""
        from orchestrator.spec.panda import format_duration

        if self.keep_for <= 0:
            return f"panda.keep = {self.keep}"
        return (
            f"panda.keep = {self.keep} epochs or panda.keep_for = "
            f"{format_duration(self.keep_for)} of training, whichever keeps more"
        )

    def path(self, segment: int, epoch: int) -> Path:
        return self.folder / f"s{segment:04d}-e{epoch:05d}.pt"

    def save(self, segment: int, epoch: int, data: bytes) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.path(segment, epoch)
        partial = final.with_suffix(".part")
        partial.write_bytes(data)
        os.replace(partial, final)
        return final

    def load(self, segment: int, epoch: int) -> bytes:
        return self.path(segment, epoch).read_bytes()

    def has(self, segment: int, epoch: int) -> bool:
        return self.path(segment, epoch).is_file()

    def held(self) -> set[tuple[int, int]]:
        """(segment, epoch) of every checkpoint on disk."""
        if not self.folder.is_dir():
            return set()
        found = (_NAME.match(p.name) for p in self.folder.iterdir())
        return {(int(m.group(1)), int(m.group(2))) for m in found if m}

    def kept_epochs(self, branch_keys: Sequence[tuple[int, int]]) -> list[int]:
        """The epochs of the branch a rewind can go back to now, oldest first."""
        held = self.held()
        return [epoch for key in branch_keys if key in held for epoch in (key[1],)]

    def wanted(
        self,
        branch_keys: Sequence[tuple[int, int]],
        saved_at: Mapping[tuple[int, int], float] | None = None,
        now: float | None = None,
    ) -> list[tuple[int, int]]:
        """The branch's checkpoints to keep, oldest first: the newest ``keep``, then older ones
        saved at most ``keep_for`` before ``now`` (``saved_at``, on the session's training
        clock; a key it lacks is not kept by time) while their files fit in
        ``keep_max_bytes``."""
        keys = list(branch_keys)
        kept = keys[-self.keep :]
        if self.keep_for <= 0 or now is None:
            return kept
        times = saved_at or {}
        used = 0
        for key in reversed(keys[: -self.keep]):
            saved = times.get(key)
            if saved is None or now - saved > self.keep_for:
                break  # the branch's times only grow: every older one is older still
            try:
                size = self.path(*key).stat().st_size
            except FileNotFoundError:
                break  # gone already (an older prune): the kept stretch ends here
            used += size
            if used > self.keep_max_bytes:
                break
            kept.insert(0, key)
        return kept

    def prune(
        self,
        branch_keys: Sequence[tuple[int, int]],
        saved_at: Mapping[tuple[int, int], float] | None = None,
        now: float | None = None,
    ) -> None:
        """Keep what :meth:`wanted` names and the pinned checkpoints; remove every other
        checkpoint file."""
        with self._locked():
            wanted = set(self.wanted(branch_keys, saved_at, now)) | self._pinned()
            for key in self.held() - wanted:
                self.path(*key).unlink(missing_ok=True)

    def pin(self, name: str, segment: int, epoch: int) -> bool:
        """Hold (segment, epoch)'s checkpoint against pruning until ``unpin(name)``; False
        (and nothing pinned) when it is already gone."""
        with self._locked():
            if not self.has(segment, epoch):
                return False
            pins = self.folder / "pins"
            pins.mkdir(exist_ok=True)
            (pins / name).write_text(f"{segment} {epoch}", encoding="utf-8")
            return True

    def unpin(self, name: str) -> None:
        (self.folder / "pins" / name).unlink(missing_ok=True)

    def _pinned(self) -> set[tuple[int, int]]:
        pins = self.folder / "pins"
        if not pins.is_dir():
            return set()
        held: set[tuple[int, int]] = set()
        now = time.time()
        for pin in pins.iterdir():
            try:
                if now - pin.stat().st_mtime > PIN_TTL_S:
                    pin.unlink(missing_ok=True)
                    continue
                segment, epoch = pin.read_text(encoding="utf-8").split()
                held.add((int(segment), int(epoch)))
            except (OSError, ValueError):  # removed meanwhile, or not a pin
                continue
        return held

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """The folder itself is the lock (flock on its descriptor): no lock file to leave."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock


def rewind_origin(
    lineage: Lineage, store: CheckpointStore, epoch: int, pin: str | None = None
) -> Segment:
    """The current branch's segment holding ``epoch``'s checkpoint; a PandaError when the
    branch has no such epoch or its checkpoint is no longer kept (with the epochs that are).
    With ``pin`` (a command's id) the checkpoint is also held until that command is answered."""
    try:
        origin = lineage.owner(epoch)
    except ValueError as error:
        raise PandaError(f"cannot rewind to epoch {epoch}: {error}") from None
    held = store.pin(pin, origin.index, epoch) if pin else store.has(origin.index, epoch)
    if not held:
        kept = store.kept_epochs(lineage.checkpoint_keys())
        shown = f"epochs {kept[0]}..{kept[-1]}" if kept else "none"
        raise PandaError(
            f"cannot rewind to epoch {epoch}: its checkpoint is no longer kept "
            f"({store.budget()}; kept now: {shown})"
        )
    return origin
