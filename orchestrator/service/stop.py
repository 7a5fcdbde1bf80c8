"""Stopping the service's processes: ``caviar down``, and what ``caviar up`` ends before it
starts a service again.

Every process ``caviar up`` started has its own session (process group), and its pid, start
time, ports and log are in the state folder (``state.py``), so ``caviar down`` stops exactly
what was started, even after ``caviar up`` itself was interrupted. The service owns each
group, not only its leader: a leader that died alone (MLflow's server, whose uvicorn child
serves the UI and holds the port) leaves the group running, and what is left of it is ended
too (only processes of the recorded group id that started after the recorded leader and carry
the service's marker). Ray's workers leave their group; they are found by that marker.
"""

from __future__ import annotations

import os
import signal
import time
from typing import TextIO

from orchestrator.service import ports
from orchestrator.service.state import (
    ProcessRecord,
    ServiceRecords,
    StateDir,
    group_members,
    marked_processes,
    marker,
    process_alive,
)
from orchestrator.service.topology import ServiceError

STOP_GRACE_S = 3.0  # Ray's and MLflow's processes exit on SIGTERM within this, or are killed
# The driver first, alone: a sweep it runs ends interrupted (MLflow runs KILLED, resumable),
# which needs Ray and the MLflow server still up.
DRIVER_GRACE_S = 30.0


def down(out: TextIO, state: StateDir | None = None) -> int:
    """Stop every process ``caviar up`` started, by its recorded id, and check none is left."""
    state = state or StateDir()
    with state.locked():
        records = state.read()
        if not records or not records.processes:
            print(f"caviar: nothing to stop in {state.path}", file=out)
            clean_runtime(state)
            return 0
        stop_all(state, records, out)
    return 0


def stop_all(state: StateDir, records: ServiceRecords, out: TextIO | None) -> None:
    order = ["driver", *sorted(n for n in records.processes if n.startswith("ray-worker")),
             "ray-head", "mlflow"]  # fmt: skip
    chosen = [records.processes[n] for n in order if n in records.processes]
    stopped = stop_records(chosen, state, out)
    kill_stragglers(state, None)
    left = marked_processes(marker(state.path, ""))
    open_ports = _wait_ports_closed(records)
    state.remove_records()
    clean_runtime(state)
    if out is not None:
        if left or open_ports:
            raise ServiceError(
                f"stopped {len(stopped)} process(es) but some remain (pids {left}, "
                f"ports still open {open_ports}); see caviar ps"
            )
        names = ", ".join(f"{r.name} ({r.pid})" for r in stopped) or "nothing was running"
        print(f"caviar: stopped {names}; no process or port of the service is left", file=out)


def stop_records(
    chosen: list[ProcessRecord], state: StateDir, out: TextIO | None
) -> list[ProcessRecord]:
    """The driver, then the others: SIGTERM each live record's process group, wait, SIGKILL
    what is left."""
    first = [r for r in chosen if r.name == "driver"]
    rest = [r for r in chosen if r.name != "driver"]
    return _stop_group(first, DRIVER_GRACE_S, state) + _stop_group(rest, STOP_GRACE_S, state)


def _stop_group(
    chosen: list[ProcessRecord], grace_s: float, state: StateDir
) -> list[ProcessRecord]:
    live = [r for r in chosen if r.alive()]
    # A dead leader's group may live on (MLflow's uvicorn child, on the service's port).
    left = [pid for r in chosen if r not in live for pid in left_of_group(state, r)]
    for pid in left:
        _kill(pid, signal.SIGKILL)
    for record in live:
        _signal_group(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(r.alive() for r in live):
        time.sleep(0.2)
    for record in live:
        _signal_group(record.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and (
        any(r.alive() for r in live) or any(process_alive(pid, None) for pid in left)
    ):
        time.sleep(0.1)
    return live


def kill_stragglers(state: StateDir, names: list[str] | None) -> None:
    """Processes of the services ``names`` (all when None) that outlived their group's
    leader: Ray's workers set their own process group, so killing ``ray start``'s group
    leaves them; their environment still says whose they are (``state.marked_processes``)."""
    prefixes = [marker(state.path, "")] if names is None else [marker(state.path, n) for n in names]
    for attempt in range(40):
        pids = {pid for prefix in prefixes for pid in marked_processes(prefix)}
        if not pids:
            return
        for pid in pids:
            _kill(pid, signal.SIGTERM if attempt == 0 else signal.SIGKILL)
        time.sleep(0.25)


def _wait_ports_closed(records: ServiceRecords, timeout_s: float = 10.0) -> list[int]:
    recorded = [p for r in records.processes.values() for p in r.ports.values()]
    deadline = time.monotonic() + timeout_s
    while True:
        still = [p for p in recorded if ports.listening(p)]
        if not still or time.monotonic() > deadline:
            return still
        time.sleep(0.25)


def clean_runtime(state: StateDir) -> None:
    """The driver's socket goes; Ray's session logs stay (0700) for whoever debugs a failure,
    as ``ray stop`` leaves /tmp/ray; the next start opens a new session beside them."""
    state.socket_path.unlink(missing_ok=True)


def left_of_group(state: StateDir, record: ProcessRecord) -> list[int]:
    """What still runs of a dead record's process group, and is the service's own."""
    return group_members(record.pid, record.start_ticks, marker(state.path, record.name))


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _kill(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
