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
- ``sched``: a call the ASHA scheduler received (so its rungs can be rebuilt exactly).

An append of one short line survives the writer being killed (the OS holds it); a kill in the
middle of a write can cut only the last line, which the reader drops. The journal is the
single source of truth on resume: the searcher, the scheduler, the records and any MLflow
writes lost with the killed process are all rebuilt from it (the ``replay`` methods of
``RoundSearcher``, ``HalvingScheduler`` and ``SweepObserver``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from orchestrator.errors import CaviarError
from orchestrator.trials import Trial, TrialState, with_epoch

JOURNAL = "journal.jsonl"
# The configuration key that hands a continued trial the checkpoint it restarts from. The
# trial adapter removes it before the trainable sees the configuration; nothing logs it.
RESUME_FROM = "_caviar_resume_from"


class JournalError(CaviarError):
    """The journal cannot be read back (damaged in the middle, not just cut at the end)."""

    exit_code = 2


class Journal:
    """Append-only writer; each event is one line, flushed to the OS at once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None
        self._closed = False

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles what holds a journal (the Tuner's state); the open file stays here."""
        return {"path": self.path, "_file": None, "_closed": self._closed}

    def append(self, event: str, **fields: Any) -> None:
        if self._closed:
            return
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
        record = {"e": event, "t": round(time.time(), 3), **fields}
        line = json.dumps(record, separators=(",", ":"), default=_plain)
        self._file.write(line + "\n")
        self._file.flush()

    def close(self) -> None:
        self._closed = True
        if self._file is not None:
            self._file.close()
            self._file = None


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
    lines = path.read_text(encoding="utf-8").split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:
            if number >= len(lines) - 1:  # the line being written when the sweep was killed
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
