"""A panda session's per-epoch checkpoints on the driver's disk, bounded by ``panda.keep``.

Each checkpoint is the bytes a trainer's ``snapshot`` returned (the session's ``state_dict``
and its config, saved by torch), in ``checkpoints/s<segment>-e<epoch>.pt``. A file appears
whole or not at all (written beside, then renamed), so a killed session never leaves half a
checkpoint for its resume. After each epoch the newest ``keep`` checkpoints of the current
branch are kept and every other file is removed: the branch's recent epochs are what a rewind
can go back to, and an abandoned branch keeps its curves (journal, MLflow), not its weights.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

_NAME = re.compile(r"^s(\d+)-e(\d+)\.pt$")


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
        ``branch_keys``); remove every other checkpoint file."""
        wanted = set(list(branch_keys)[-self.keep :])
        for key in self.held() - wanted:
            self.path(*key).unlink(missing_ok=True)
