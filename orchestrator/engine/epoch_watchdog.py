"""The watchdog that ends a worker whose epoch hangs (``resources.epoch_timeout_s``)."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path


class EpochWatchdog:
    """Ends this worker process when one epoch runs past ``timeout_s`` (None: never).

    A thread of its own, started with the first watched epoch, checks the deadline a few
    times per timeout; it costs the epoch loop two clock reads. The process exit is the only
    stop a hung epoch cannot ignore: the actor's task thread may be blocked in C code that no
    Python exception reaches. Tune then restarts the trial (``storage.max_failures``) or ends
    it failed, and the driver names the timeout (``StallWatch.timed_out``, engine/stalls.py).
    """

    EXIT_CODE = 124  # what ``timeout(1)`` exits with

    def __init__(self, timeout_s: float | None, note: Path | None = None) -> None:
        self.timeout_s = timeout_s
        self.note = note
        self._deadline: float | None = None
        self._epoch = 0
        self._thread: threading.Thread | None = None

    def watching(self, epoch: int) -> _Watched:
        return _Watched(self, epoch)

    def arm(self, epoch: int) -> None:
        if self.timeout_s is None:
            return
        self._epoch = epoch
        self._deadline = time.monotonic() + self.timeout_s
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._watch, name="caviar-epoch-watchdog", daemon=True
            )
            self._thread.start()

    def disarm(self) -> None:
        self._deadline = None

    def _watch(self) -> None:
        assert self.timeout_s is not None
        period = min(1.0, self.timeout_s / 4)
        while True:
            time.sleep(period)
            deadline = self._deadline
            if deadline is not None and time.monotonic() > deadline:
                self._leave_note()
                print(
                    f"caviar: an epoch ran past resources.epoch_timeout_s "
                    f"({self.timeout_s:g} s); ending this worker (pid {os.getpid()})",
                    file=sys.stderr,
                    flush=True,
                )
                os._exit(self.EXIT_CODE)

    def _leave_note(self) -> None:
        if self.note is None:
            return
        try:
            self.note.parent.mkdir(parents=True, exist_ok=True)
            self.note.write_text(json.dumps({"epoch": self._epoch, "timeout_s": self.timeout_s}))
        except OSError:
            pass  # the driver still names a timeout from its own clock


class _Watched:
    """``with watchdog.watching(epoch):`` one epoch under the watchdog's deadline."""

    def __init__(self, watchdog: EpochWatchdog, epoch: int) -> None:
        self._watchdog = watchdog
        self._epoch = epoch

    def __enter__(self) -> None:
        self._watchdog.arm(self._epoch)

    def __exit__(self, *exc: object) -> None:
        self._watchdog.disarm()
