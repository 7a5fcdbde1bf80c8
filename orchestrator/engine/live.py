"""The parts of a running sweep that live only in this process: tracker, terminal, listeners.

Ray Tune pickles its callbacks and search algorithm (into the Tuner's state file, and when it
snapshots the experiment), and may hand a copy back. An MLflow writer thread or a terminal
cannot travel that way, so the pickled objects carry only the sweep's id and look the live
objects up here; ``run_sweep`` registers them before Tune starts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.engine.progress import ProgressLine
    from orchestrator.store.tracking import SweepTracker


@dataclass
class LiveSweep:
    tracker: SweepTracker
    progress: ProgressLine
    on_round: Callable[..., Any] | None = None
    observer: Any = None  # the SweepObserver Tune actually calls
    pbt: Any = None  # a PBT sweep's GenerationLog (engine/pbt_setup.py)


# Process-wide on purpose: Tune restores its pickled callbacks and searcher wherever it likes
# (its state file, its experiment snapshots), with no way to hand them a live object, so the
# only context a restored copy shares with ``run_sweep`` is the process; the sweep's id, which
# the copy carries, is the key. Invariant: an entry exists exactly from ``run_sweep``'s
# ``register`` (before Tune starts) to the ``unregister`` of its ``finally``, so a lookup
# outside a running sweep finds nothing, and two sweeps in one process (``caviar up``'s
# driver runs one after another) never see each other's objects.
_LIVE: dict[str, LiveSweep] = {}


def register(sweep_id: str, live: LiveSweep) -> None:
    _LIVE[sweep_id] = live


def unregister(sweep_id: str) -> None:
    _LIVE.pop(sweep_id, None)


def lookup(sweep_id: str | None) -> LiveSweep | None:
    return _LIVE.get(sweep_id) if sweep_id else None
