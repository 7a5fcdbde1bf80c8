"""``caviar ps`` (``caviar up --status``): what of the service runs, since when, where.

A process is running when its recorded pid is the process that was started (its start time)
and it answers; degraded when its leader died but the group it owned still runs (the next
``caviar up`` ends that group and starts it again); dead otherwise, and every process is dead
after a reboot (the records name another boot).
"""

from __future__ import annotations

from typing import TextIO

from orchestrator.cluster import services
from orchestrator.service.state import StateDir, same_boot, since
from orchestrator.service.stop import left_of_group
from orchestrator.service.topology import Topology


def status(out: TextIO, state: StateDir | None = None) -> int:
    """What runs, since when, where its log is; 0 when everything runs and answers."""
    state = state or StateDir()
    records = state.read()
    if not records or not records.processes:
        print(f"caviar: no service in {state.path} (caviar up starts one)", file=out)
        return 1
    topology = Topology(state, dict(records.settings), _token_if_any(state))
    rows = [("SERVICE", "PID", "STATE", "SINCE", "ADDRESS", "LOG")]
    down, notes = [], []
    for name in topology.names():
        record = records.processes.get(name)
        if record is None:
            rows.append((name, "-", "not started", "-", "-", "-"))
            down.append(name)
            continue
        if not same_boot(records):
            health = "dead"
        elif not record.alive():
            left = left_of_group(state, record)
            health = "degraded" if left else "dead"
            if left:
                answering = " and still answers" if topology.healthy(name) else ""
                notes.append(
                    f"caviar: {name}: its leader (pid {record.pid}) died, but its process "
                    f"group still runs{answering} (pids {', '.join(map(str, left))}); "
                    "caviar up ends the group and starts it again"
                )
        else:
            health = "running" if topology.healthy(name) else "not answering"
        if health != "running":
            down.append(name)
        rows.append(
            (
                name,
                str(record.pid),
                health,
                since(record.started_at),
                _address(name, topology),
                record.log,
            )
        )
    print(f"caviar: service in {state.path}", file=out)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)] + [row[-1]]
        print("  " + "  ".join(cells), file=out)
    for note in notes:
        print(note, file=out)
    if down:
        print(
            f"caviar: not running or not answering: {', '.join(down)}; caviar up restarts them",
            file=out,
        )
        return 1
    return 0


def _address(name: str, topology: Topology) -> str:
    if name not in topology.ports:
        return "-"
    if name == "ray-head":
        return f"{topology.gcs_address}, dashboard {topology.dashboard_url}"
    if name == "mlflow":
        return topology.mlflow_url
    if name == "driver":
        return str(topology.state.socket_path)
    agent = topology.ports.get(name, {}).get("agent")
    return f"{services.LOOPBACK}:{agent} (agent)" if agent else "-"


def _token_if_any(state: StateDir) -> str:
    path = state.path / "auth_token"
    return path.read_text(encoding="utf-8").strip() if path.is_file() else ""
