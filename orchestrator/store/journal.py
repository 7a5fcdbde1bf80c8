"""The sweep's journal: every event that decides its outcome, appended as it happens.

Resuming from Ray Tune's experiment snapshot proved unreliable under SIGKILL: the snapshot is
staged and copied file by file in a background thread, so a kill can leave the trial table,
the searcher and the callbacks from different moments (or a file cut short), and the trial
checkpoints it names may already be rotated away. caviar therefore keeps its own record, one
JSON line per event, written by the driver before the event is passed on to MLflow, each with
its wall-clock time ``t`` (seconds since the epoch):

- ``trial``: a trial started (its index, round, Ray trial id and configuration; for a fused
  pack's member, ``pack``: the index of the pack's first member);
- ``result``: one epoch's result of a trial;
- ``checkpoint``: a trial's checkpoint is persisted (its path);
- ``end``: a trial ended (outcome, error);
- ``sched``: a call the ASHA scheduler received (so its rungs can be rebuilt exactly): ``op``
  ``add``, ``result``, ``complete`` or ``remove`` of one trial (``k``), or ``results``: the
  members of a pack judged together at one step (``k``, ``r`` and ``d`` are lists).

An append of one short line survives the writer being killed (the OS holds it); a kill in the
middle of a write (or a full disk) can cut only the last line, which the reader drops and the
next writer cuts off before it appends: a torn line never ends up inside the journal. A write
that fails (``ENOSPC``, ``EIO``) raises :class:`JournalWriteError` at once, after cutting off
what it half wrote, and the journal takes no more lines. The journal is the
single source of truth on resume: the searcher, the scheduler, the records and any MLflow
writes lost with the killed process are all rebuilt from it (the ``replay`` methods of
``RoundSearcher``, ``HalvingScheduler`` and ``SweepObserver``).
"""

from __future__ import annotations

import errno
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.errors import CaviarError, SweepHalted
from orchestrator.trials import Trial, TrialState, with_epoch

JOURNAL = "journal.jsonl"
# The configuration key that hands a continued trial the checkpoint it restarts from. The
# trial adapter removes it before the trainable sees the configuration; nothing logs it.
RESUME_FROM = "_caviar_resume_from"


class JournalError(CaviarError):
    """The journal cannot be read back (damaged in the middle, not just cut at the end)."""

    exit_code = 2


class JournalWriteError(SweepHalted):
    """The journal could not be written (a full disk, a failing one): the sweep must stop,
    since an event it cannot journal would be lost to ``--resume``."""

    def __init__(self, path: Path, error: OSError) -> None:
        self.path = path
        self.errno = error.errno
        super().__init__(_write_failure(path, error))


class Journal:
    """Append-only writer; each event is one line, written to the OS at once (unbuffered
    bytes: nothing waits in this process for a kill to lose)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._closed = False
        self.failure: JournalWriteError | None = None  # the write that closed it, if one did

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles what holds a journal (the Tuner's state); the open file stays here."""
        return {"path": self.path, "_fd": None, "_closed": self._closed, "failure": None}

    def append(self, event: str, **fields: Any) -> None:
        if self._closed:
            return
        record = {"e": event, "t": round(time.time(), 3), **fields}
        line = (json.dumps(record, separators=(",", ":"), default=_plain) + "\n").encode()
        try:
            if self._fd is None:
                self._fd = _open_for_append(self.path)
            _write_line(self._fd, line)
        except OSError as error:
            self.close()  # nothing more is journaled: the sweep stops on this error
            self.failure = JournalWriteError(self.path, error)
            raise self.failure from None

    def close(self) -> None:
        self._closed = True
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _open_for_append(path: Path) -> int:
    """The journal opened for appending, its torn last line (a killed writer's) cut off, so
    every line this writer adds starts on a line of its own."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size:
            os.ftruncate(fd, _complete_length(fd, size))
    except OSError:
        os.close(fd)
        raise
    return fd


def _complete_length(fd: int, size: int) -> int:
    """The length of the file's complete lines: up to and including its last newline."""
    end = size
    while end > 0:
        start = max(0, end - 65536)
        chunk = os.pread(fd, end - start, start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        end = start
    return 0


def _write_line(fd: int, line: bytes) -> None:
    """The whole line or, on failure, none of it: a partial write is cut off again."""
    before = os.fstat(fd).st_size
    written = 0
    try:
        while written < len(line):
            written += os.write(fd, line[written:])
    except OSError:
        if written:
            try:
                os.ftruncate(fd, before)
            except OSError:
                pass  # the reader drops a torn last line, and the next writer cuts it off
        raise


def _write_failure(path: Path, error: OSError) -> str:
    folder = path.parent
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return (
            f"the file system holding {folder} is full ({error.strerror}); the sweep stopped "
            "with everything it journaled kept. Free some space there, then resume it"
        )
    return f"cannot write the sweep's journal {path} ({error.strerror}); the sweep stopped"


@dataclass
class JournalState:
    """Everything a resumed sweep needs, in the order it happened."""

    trials: dict[int, Trial] = field(default_factory=dict)
    scheduler_calls: list[dict[str, Any]] = field(default_factory=list)


def read_journal(path: Path) -> JournalState:
    """Parse the journal; an absent file is an empty sweep, a cut last line is dropped."""
    state = JournalState()
    if not path.exists():
        return state
    lines = path.read_bytes().decode("utf-8", errors="replace").split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:
            if number == len(lines):  # no newline after it: being written when killed
                break
            raise JournalError(
                f"{path}, line {number}, is damaged; the sweep cannot be resumed from it. "
                "Run the spec under another name to start afresh"
            ) from None
        _apply(state, event)
    return state


def _apply(state: JournalState, event: dict[str, Any]) -> None:
    kind = event.get("e")
    if kind == "sched":
        state.scheduler_calls.append(event)
        return
    index = int(event.get("i", -1))
    if kind == "trial":
        state.trials[index] = Trial(
            index,
            dict(event["config"]),
            round=int(event["round"]),
            trial_id=str(event["id"]),
            started_at=_t(event),
            pack=int(event["pack"]) if event.get("pack") is not None else None,
        )
        return
    trial = state.trials.get(index)
    if trial is None:
        return
    if kind == "result":
        entry = dict(event["r"])
        trial.history = with_epoch(trial.history, entry)
        trial.node_id = entry.get("node_id", trial.node_id)
    elif kind == "checkpoint":
        trial.checkpoint = str(event["path"])
    elif kind == "end":
        trial.state = TrialState(str(event["outcome"]))
        trial.error = event.get("error")
        trial.ended_at = _t(event)


def _t(event: dict[str, Any]) -> float | None:
    return float(event["t"]) if "t" in event else None


def _plain(value: Any) -> Any:
    """numpy scalars (and anything else with ``item``) as plain numbers."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)
