"""A panda session's per-epoch checkpoints on the driver's disk, bounded by ``panda.keep``.

Each checkpoint is the bytes a trainer's ``snapshot`` returned (the session's ``state_dict``
and its config, saved by torch), in ``checkpoints/s<segment>-e<epoch>.pt``. A file appears
whole or not at all (written beside, then renamed), so a killed session never leaves half a
checkpoint for its resume. After each epoch the newest ``keep`` checkpoints of the current
branch are kept and every other file is removed: the branch's recent epochs are what a rewind
can go back to, and an abandoned branch keeps its curves (journal, MLflow), not its weights.

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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

_NAME = re.compile(r"^s(\d+)-e(\d+)\.pt$")
PIN_TTL_S = 600.0


class CheckpointStore:
    def __init__(self, folder: Path, keep: int) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.folder = folder
        self.keep = keep

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

    def prune(self, branch_keys: Sequence[tuple[int, int]]) -> None:
        """Keep the newest ``keep`` checkpoints of the branch (oldest first in
        ``branch_keys``) and the pinned ones; remove every other checkpoint file."""
        with self._locked():
            wanted = set(list(branch_keys)[-self.keep :]) | self._pinned()
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
