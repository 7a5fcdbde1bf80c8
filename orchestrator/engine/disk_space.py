"""A full disk halts the sweep (kept for ``--resume``) instead of failing its trials.

Two ways to see it, both on the driver: a worker's error that says it could not write for lack
of space (Tune would otherwise retry the trial into the same full disk), and the sweep's
folder found (almost) full before anything fails.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import Any

from orchestrator.errors import SweepHalted

# What a worker's error says when it could not write for lack of space.
DISK_FULL_HINTS = ("No space left on device", f"[Errno {errno.ENOSPC}]", "Disk quota exceeded")
# Below this much free space the sweep's folder counts as full: the next checkpoint or
# journal line fails, and Tune would first retry every trial whose save failed.
MIN_FREE_BYTES = 1 << 20
SPACE_CHECK_EVERY_S = 1.0


def error_text(trial: Any) -> str:
    """A Tune trial's error file, as written (empty when there is none)."""
    path = getattr(trial, "error_file", None)
    try:
        return Path(path).read_text() if path else ""
    except OSError:
        return ""


def error_summary(trial: Any) -> str:
    """The last line of the trial's error: enough to see what went wrong in the MLflow UI."""
    text = error_text(trial)
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else "trial failed")[:500]


def failed_for_space(trial: Any) -> bool:
    """The trial's error says it could not write for lack of space: not the trial's fault."""
    text = error_text(trial)
    return any(hint in text for hint in DISK_FULL_HINTS)


class SpaceCheck:
    """The sweep's folder (checkpoints, journal) checked for space at most once a second."""

    def __init__(self, storage_dir: Path | None) -> None:
        self.storage_dir = storage_dir
        self._checked = 0.0

    def disk_full(self, detail: str) -> SweepHalted:
        """Why the sweep halts when a trial could not write (``detail``: its error)."""
        where = f" holding {self.storage_dir}" if self.storage_dir is not None else ""
        return SweepHalted(
            f"a trial could not write: the file system{where} is full ({detail}); the sweep "
            "stopped with everything it journaled kept. Free some space there"
        )

    def full(self) -> SweepHalted | None:
        """Why the sweep must halt, once its folder has (almost) no space left; else None."""
        now = time.monotonic()
        if self.storage_dir is None or now - self._checked < SPACE_CHECK_EVERY_S:
            return None
        self._checked = now
        try:
            stat = os.statvfs(self.storage_dir)
        except OSError:
            return None  # not there yet, or a file system without the call: the writes will tell
        free = stat.f_bavail * stat.f_frsize
        if free >= MIN_FREE_BYTES:
            return None
        return SweepHalted(
            f"the file system holding {self.storage_dir} is full ({free // 1024} KiB "
            "free); the sweep stopped with everything it journaled kept. Free some "
            "space there"
        )
