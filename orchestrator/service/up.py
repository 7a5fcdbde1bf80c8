"""``caviar up``: start the service's processes (``topology.py``), or restart what died.

Every process is recorded in the state folder (``state.py``) before anything waits on it, so
``caviar down`` (``stop.py``) stops exactly what was started, even after ``caviar up`` itself
was interrupted. A second ``caviar up`` says the service is up, or restarts what died and what
depends on it; a service whose leader died while its group lives on (MLflow's uvicorn child)
has that group ended and its ports free before it starts again. ``caviar ps``: ``status.py``.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from orchestrator.cluster import services
from orchestrator.service import identity, ports
from orchestrator.service.state import (
    ProcessRecord,
    ServiceRecords,
    StateDir,
    boot_id,
    open_log,
    same_boot,
    start_ticks,
)
from orchestrator.service.stop import kill_stragglers, left_of_group, stop_all, stop_records
from orchestrator.service.topology import ServiceError, Topology, UpOptions, settings_for

START_TIMEOUT_S = 120.0


def up(options: UpOptions, out: TextIO, state: StateDir | None = None) -> int:
    """Start what is not running (everything, the first time), wait for it, print where."""
    state = state or StateDir()
    with state.locked():
        records = state.read()
        recorded = records.settings if records else {}
        if records and not same_boot(records):
            print(
                f"caviar: stale state in {state.path} (from before a reboot); cleaning it", file=out
            )
            stop_all(state, records, out=None)
            records = None
        settings = settings_for(state, options, recorded)
        topology = Topology(state, settings, state.token())
        if records is None or not records.processes:
            return _start_fresh(state, topology, out)
        return _repair(state, records, topology, options, out)


def _start_fresh(state: StateDir, topology: Topology, out: TextIO) -> int:
    if state.socket_path.exists():
        state.socket_path.unlink()
    from orchestrator.store.sqlite_seed import seed_new_sqlite_store

    # A new SQLite store is a copy of a migrated one: the server answers seconds sooner.
    seed_new_sqlite_store(str(topology.settings["backend_store_uri"]))
    records = ServiceRecords(settings=topology.settings)
    records.settings["boot_id"] = boot_id()
    records.settings["up_since"] = time.time()
    records.settings["caviar"] = identity.code_identity()  # what the driver will run
    print(f"caviar: starting the service in {state.path} ...", file=out, flush=True)
    started = time.monotonic()
    names = topology.names()
    topology.assign_ports(names)
    try:
        _start_and_wait(state, records, topology, names, out)
    except BaseException:
        stop_all(state, records, out=None)
        raise
    print(f"caviar: up in {time.monotonic() - started:.1f} s", file=out)
    _print_where(state, topology, out)
    return 0


def _repair(
    state: StateDir,
    records: ServiceRecords,
    topology: Topology,
    options: UpOptions,
    out: TextIO,
) -> int:
    """A second ``caviar up``: say it is up, or restart what died (and what depends on it)."""
    changed = [
        name
        for name in ("workers", "cpus_per_worker", "gpus", "mlflow_port", "backend_store_uri")
        if getattr(options, name) is not None
        and getattr(options, name) != records.settings.get(name)
    ]
    dead = [name for name in topology.names() if not _alive(records, name)]
    if not dead:
        if changed:
            raise ServiceError(
                f"the service in {state.path} is already up with other settings "
                f"({', '.join(changed)}); caviar down first, then caviar up with the new ones"
            )
        print(f"caviar: the service in {state.path} is already up", file=out)
        _say_if_other_code(state, records, out)
        _print_where(state, topology, out)
        return 0
    if len(dead) == len(topology.names()):
        print(f"caviar: stale state in {state.path} (nothing of it runs); cleaning it", file=out)
        stop_all(state, records, out=None)
        return _start_fresh(state, topology, out)
    restart = set(dead)
    if "ray-head" in restart:  # the cluster is gone: its nodes and the driver go with it
        restart |= {n for n in topology.names() if n.startswith("ray-") or n == "driver"}
    restart |= {n for n in topology.names() if n not in records.processes}
    order = [n for n in topology.names() if n in restart]
    print(f"caviar: not running: {', '.join(dead)}; restarting {', '.join(order)}", file=out)
    _end_what_is_left(state, records, order, out)
    if "driver" in order:
        records.settings["caviar"] = identity.code_identity()
    topology.assign_ports(order)
    _start_and_wait(state, records, topology, order, out)
    if "driver" not in order:
        _say_if_other_code(state, records, out)
    _print_where(state, topology, out)
    return 0


def _end_what_is_left(
    state: StateDir, records: ServiceRecords, names: list[str], out: TextIO
) -> None:
    """Stop ``names`` before they start again: the live ones, what a dead leader left of its
    group (said on ``out``) and their stragglers; then wait until their recorded ports are
    free (a killed process lets go of its sockets a moment after it is signalled)."""
    stopped = [records.processes.pop(n) for n in reversed(names) if n in records.processes]
    for record in stopped:
        left = left_of_group(state, record)
        if left and not record.alive():
            print(
                f"caviar: {record.name}'s leader (pid {record.pid}) had died, but its process "
                f"group still ran (pids {', '.join(map(str, left))}); ending it",
                file=out,
            )
        stop_records([record], state, out=None)
    kill_stragglers(state, names)
    _wait_ports_free(stopped)


def _wait_ports_free(stopped: list[ProcessRecord], timeout_s: float = 10.0) -> list[int]:
    recorded = [p for r in stopped for p in r.ports.values()]
    deadline = time.monotonic() + timeout_s
    while True:
        held = [p for p in recorded if not ports.bindable(p)]
        if not held or time.monotonic() > deadline:
            return held
        time.sleep(0.1)


def _say_if_other_code(state: StateDir, records: ServiceRecords, out: TextIO) -> None:
    """A service up before this caviar was changed serves no ``caviar run`` of it."""
    from orchestrator.service.client import ping

    answer = ping(state.socket_path) or {}
    theirs, mine = answer.get("caviar", records.settings.get("caviar")), identity.code_identity()
    if theirs != mine:
        print(
            f"caviar: it runs other caviar code ({identity.describe(theirs)}; this caviar: "
            f"{identity.describe(mine)}), so this caviar's runs do not use it: caviar down, "
            "then caviar up, serves this code",
            file=out,
        )


def _start_and_wait(
    state: StateDir, records: ServiceRecords, topology: Topology, names: list[str], out: TextIO
) -> None:
    """Start ``names`` in dependency order; each is recorded before it is waited on, and
    each is reported on ``out`` when it answers (starting takes tens of seconds)."""
    started = time.monotonic()

    def ready(name: str) -> None:
        print(f"  {name:<13} ready after {time.monotonic() - started:4.1f} s", file=out, flush=True)

    def start(name: str) -> None:
        records.processes[name] = _spawn(state, topology, name)
        state.write(records)

    # MLflow is the slowest; the driver imports for seconds before it joins the head.
    first = [n for n in names if n in ("mlflow", "ray-head", "driver")]
    for name in first:
        start(name)
    if "ray-head" in names:
        _wait(records, topology, ["ray-head"], ready)
    rest = [n for n in names if n not in first]
    for name in rest:
        start(name)
    _wait(records, topology, [n for n in names if n != "ray-head"], ready)
    if any(n.startswith("ray-") or n == "driver" for n in names):
        # Idle trial workers with torch imported, on every node, for the first sweep.
        from orchestrator.service.client import ask

        answer = ask(state.socket_path, {"prestart": True}, timeout_s=30.0)
        asked = (answer or {}).get("asked")
        if asked:
            print(f"  {asked} trial worker(s) starting, torch imported ahead", file=out)


def _spawn(state: StateDir, topology: Topology, name: str) -> ProcessRecord:
    state.create(runtime=True)
    log = state.log_path(name)
    fd = open_log(log)
    env = topology.env(name)
    if name.startswith("ray-"):
        topology.ray_temp_dir(name).mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        process = subprocess.Popen(
            topology.command(name),
            cwd=state.path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: down stops it and all it started
        )
    finally:
        os.close(fd)
    return ProcessRecord(
        name=name,
        pid=process.pid,
        start_ticks=start_ticks(process.pid),
        started_at=time.time(),
        log=str(log),
        ports=dict(topology.ports.get(name, {})),
    )


def _wait(
    records: ServiceRecords,
    topology: Topology,
    names: list[str],
    ready: Callable[[str], None] | None = None,
) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    waiting = list(names)
    while waiting:
        for name in list(waiting):
            record = records.processes[name]
            if not record.alive():
                raise ServiceError(
                    f"{name} exited while starting; the end of its log "
                    f"({record.log}):\n{_tail(Path(record.log))}"
                )
            if topology.healthy(name):
                waiting.remove(name)
                if ready is not None:
                    ready(name)
        if waiting and time.monotonic() > deadline:
            raise ServiceError(
                f"{', '.join(waiting)} did not become healthy within {START_TIMEOUT_S:.0f} s; "
                f"see the logs in {topology.state.logs}"
            )
        if waiting:
            time.sleep(0.25)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _print_where(state: StateDir, topology: Topology, out: TextIO) -> None:
    settings = topology.settings
    print(
        f"  Ray:           {topology.gcs_address}, {settings['workers']} worker(s) x "
        f"{settings['cpus_per_worker']} CPUs (token in {state.path / 'auth_token'})\n"
        f"  Ray dashboard: {topology.dashboard_url}\n"
        f"  MLflow UI:     {topology.mlflow_url}  "
        f"(store {services.redact('MLFLOW_BACKEND_STORE_URI', settings['backend_store_uri'])})\n"
        f"  caviar run SPEC now runs here; caviar ps shows the processes, caviar down stops them",
        file=out,
    )


def _alive(records: ServiceRecords, name: str) -> bool:
    record = records.processes.get(name)
    return record is not None and record.alive()
