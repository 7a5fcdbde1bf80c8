"""``caviar up``, ``down``, ``ps``: the service's processes, started, checked and stopped.

The topology is docker-compose.yml's, as local processes on loopback, each started the way
compose starts it (``python -m orchestrator.cluster.services SERVICE``, the one definition
of each command) and differing only in its environment:

- ``ray-head``: GCS, dashboard and job API; no CPUs of its own (it drives, workers train);
- ``ray-worker-1`` .. ``ray-worker-N``: the trial nodes, each with its own temp folder and
  agent ports (two nodes on one machine collide on Ray's default agent port);
- ``mlflow``: the tracking server and its UI, on SQLite under the state folder by default;
- ``driver``: the warm sweep driver ``caviar run`` hands its spec to (``driver.py``).

Every process gets its own session (process group) and its pid, start time, ports and log
are recorded in the state folder (``state.py``) before anything waits on it, so ``caviar
down`` stops exactly what was started, even after ``caviar up`` itself was interrupted.
The token reaches Ray and the driver in their environment only. Every process listens on
127.0.0.1 alone, Ray's included (``services.LOCAL_ONLY_ENV``).

The service owns each such group, not only its leader: a leader that died alone (MLflow's
server, whose uvicorn child serves the UI and holds the port) leaves the group running.
``caviar ps`` reports that service as degraded, and ``caviar up`` ends what is left of the
group (only processes of the recorded group id that started after the recorded leader and
carry the service's marker) and waits for its ports before starting it again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from orchestrator import speedups
from orchestrator.cluster import services
from orchestrator.environment import ENVIRONMENT_DEFAULTS
from orchestrator.errors import CaviarError
from orchestrator.service import identity, ports
from orchestrator.service.fixed_nodes import DASHBOARD_ENV
from orchestrator.service.state import (
    MARKER_ENV,
    ProcessRecord,
    ServiceRecords,
    StateDir,
    group_members,
    marked_processes,
    marker,
    open_log,
    process_alive,
    since,
    start_ticks,
)

SERVICE = (sys.executable, "-m", "orchestrator.cluster.services")
DRIVER = (sys.executable, "-m", "orchestrator.service.driver")
START_TIMEOUT_S = 120.0
STOP_GRACE_S = 3.0  # Ray's and MLflow's processes exit on SIGTERM within this, or are killed
# The driver first, alone: a sweep it runs ends interrupted (MLflow runs KILLED, resumable),
# which needs Ray and the MLflow server still up.
DRIVER_GRACE_S = 30.0
# What every trial worker of the service imports when Ray starts it (engine/warm.py).
WORKER_PRELOAD = "torch,orchestrator.engine.trial_actor"
# Variables of the user's shell that would point a service somewhere else.
_DROPPED_ENV = ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH", "MLFLOW_TRACKING_URI")


class ServiceError(CaviarError):
    """The service cannot be started, checked or stopped as asked."""

    exit_code = 2


@dataclass(frozen=True)
class UpOptions:
    """``caviar up``'s flags; None means "as recorded, else the default"."""

    workers: int | None = None
    cpus_per_worker: int | None = None
    gpus: int | None = None
    mlflow_port: int | None = None
    backend_store_uri: str | None = None


# --- settings and environments -----------------------------------------------------------


def _settings(state: StateDir, given: UpOptions, recorded: Mapping[str, Any]) -> dict[str, Any]:
    def pick(name: str, default: Any) -> Any:
        value = getattr(given, name)
        return value if value is not None else recorded.get(name, default)

    settings = {
        **recorded,  # the ports, the boot id, when it came up
        "workers": pick("workers", 1),
        "cpus_per_worker": pick("cpus_per_worker", _usable_cpus()),
        "gpus": pick("gpus", None),
        "mlflow_port": pick("mlflow_port", services.DEFAULT_MLFLOW_PORT),
        "backend_store_uri": pick(
            "backend_store_uri", f"sqlite:///{state.path / 'mlflow' / 'mlflow.db'}"
        ),
    }
    if settings["workers"] < 1:
        raise ServiceError(f"--workers must be >= 1, got {settings['workers']}")
    if settings["cpus_per_worker"] < 1:
        raise ServiceError(f"--cpus-per-worker must be >= 1, got {settings['cpus_per_worker']}")
    if settings["gpus"] is not None and settings["gpus"] < 0:
        raise ServiceError(f"--gpus must be >= 0, got {settings['gpus']}")
    return settings


def _usable_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS
        return max(1, os.cpu_count() or 1)


def _base_env(token: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
    for name, value in ENVIRONMENT_DEFAULTS.items():
        env.setdefault(name, value)
    env.update(
        PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        CAVIAR_NODE_IP=services.LOOPBACK,
        PYTHONUNBUFFERED="1",
    )
    # Ray on 127.0.0.1 alone: every node's servers listen on loopback only, and the driver
    # reaches the head at 127.0.0.1 (with the switch on, Ray would dial the machine's address).
    env[services.LOCAL_ONLY_ENV] = "0"
    return env


class Topology:
    """Ports, folders and environments of every process, from the recorded settings."""

    def __init__(self, state: StateDir, settings: dict[str, Any], token: str) -> None:
        self.state, self.settings, self.token = state, settings, token
        self.ports: dict[str, dict[str, int]] = settings.setdefault("ports", {})

    def names(self) -> list[str]:
        workers = [f"ray-worker-{i}" for i in range(1, int(self.settings["workers"]) + 1)]
        return ["mlflow", "ray-head", *workers, "driver"]

    def assign_ports(self, names: list[str]) -> None:
        """Ports for ``names``: the recorded ones while free, else new (Ray's well-known ports
        and MLflow's when free)."""
        for name in names:
            wanted = self._wanted_ports(name)
            mine = self.ports.get(name, {})
            taken = [p for n, ps in self.ports.items() if n != name for p in ps.values()]
            chosen: dict[str, int] = {}
            for key, preferred in wanted.items():
                previous = mine.get(key)
                if previous is not None and ports.bindable(previous):
                    chosen[key] = previous
                elif key == "mlflow" and self.settings["mlflow_port"] is not None:
                    port = int(self.settings["mlflow_port"])
                    if not ports.bindable(port):
                        raise ServiceError(
                            f"port {port} for the MLflow server is taken; stop what holds it "
                            "or choose another with caviar up --mlflow-port PORT"
                        )
                    chosen[key] = port
                else:
                    chosen[key] = ports.pick(preferred, [*taken, *chosen.values()])
            self.ports[name] = chosen

    @staticmethod
    def _wanted_ports(name: str) -> dict[str, int | None]:
        agent = {"agent": None, "agent_grpc": None, "metrics": None, "runtime_env": None}
        if name == "ray-head":
            return {
                "gcs": services.DEFAULT_GCS_PORT,
                "dashboard": services.DEFAULT_DASHBOARD_PORT,
                "client": services.DEFAULT_RAY_CLIENT_PORT,
                **agent,
            }
        if name.startswith("ray-worker"):
            return dict(agent)
        if name == "mlflow":
            return {"mlflow": services.DEFAULT_MLFLOW_PORT}
        return {}

    @property
    def gcs_address(self) -> str:
        return f"{services.LOOPBACK}:{self.ports['ray-head']['gcs']}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{services.LOOPBACK}:{self.ports['ray-head']['dashboard']}"

    @property
    def mlflow_url(self) -> str:
        return f"http://{services.LOOPBACK}:{self.ports['mlflow']['mlflow']}"

    @property
    def driver_store(self) -> str:
        """Where the driver writes sweeps: straight into the server's SQLite file (the same
        store, without an HTTP request per write competing with the trials for the cores;
        docs/performance.md), else through the server (a database URI may hold a password,
        which caviar never puts in a tracking URI)."""
        backend = str(self.settings["backend_store_uri"])
        from orchestrator.store.uri import is_sqlite

        return backend if is_sqlite(backend) else self.mlflow_url

    def ray_temp_dir(self, name: str) -> Path:
        short = "h" if name == "ray-head" else "w" + name.rsplit("-", 1)[-1]
        return self.state.runtime_dir() / short

    def command(self, name: str) -> list[str]:
        if name == "driver":
            return [
                *DRIVER, "--socket", str(self.state.socket_path), "--home", str(self.state.path)
            ]  # fmt: skip
        return [*SERVICE, "ray-worker" if name.startswith("ray-worker") else name]

    def env(self, name: str) -> dict[str, str]:
        env = _base_env(self.token)
        env[MARKER_ENV] = marker(self.state.path, name)  # how down finds all it started
        mine = self.ports.get(name, {})
        if name == "mlflow":
            env.pop("RAY_AUTH_TOKEN")  # least privilege, as in the compose file
            artifacts = self.state.path / "mlflow" / "mlruns"  # local_store.ARTIFACTS
            artifacts.mkdir(parents=True, exist_ok=True)
            env.update(
                CAVIAR_MLFLOW_PORT=str(mine["mlflow"]),
                CAVIAR_MLFLOW_WORKERS="1",
                CAVIAR_MLFLOW_ARTIFACT_ROOT=str(artifacts),
                MLFLOW_BACKEND_STORE_URI=str(self.settings["backend_store_uri"]),
                # MLflow 3's job runner (GenAI scoring jobs, a huey consumer with its own
                # worker processes) is of no use to sweeps and doubles the server's start.
                MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
            )
            return env
        if name == "driver":
            env.update(
                RAY_ADDRESS=self.gcs_address,
                MLFLOW_TRACKING_URI=self.driver_store,
                CAVIAR_MLFLOW_UI=self.mlflow_url,
            )
            env[DASHBOARD_ENV] = self.dashboard_url  # which nodes there are, for its refusals
            return env
        env.update(
            CAVIAR_RAY_TEMP_DIR=str(self.ray_temp_dir(name)),
            CAVIAR_DASHBOARD_AGENT_PORT=str(mine["agent"]),
            CAVIAR_DASHBOARD_AGENT_GRPC_PORT=str(mine["agent_grpc"]),
            CAVIAR_METRICS_PORT=str(mine["metrics"]),
            CAVIAR_RUNTIME_ENV_AGENT_PORT=str(mine["runtime_env"]),
        )
        if name == "ray-head":
            env.update(
                CAVIAR_NUM_CPUS="0",  # the head schedules and drives; the workers train
                CAVIAR_NUM_GPUS="0",
                CAVIAR_RAY_PORT=str(mine["gcs"]),
                CAVIAR_DASHBOARD_HOST=services.LOOPBACK,
                CAVIAR_DASHBOARD_PORT=str(mine["dashboard"]),
                CAVIAR_RAY_CLIENT_PORT=str(mine["client"]),
                MLFLOW_TRACKING_URI=self.mlflow_url,  # where submitted sweeps log
                CAVIAR_STORAGE_PATH=str(self.state.path / "caviar_runs"),
            )
            if speedups.enabled():
                env["CAVIAR_RAY_PRELOAD_MODULES"] = WORKER_PRELOAD
            return env
        index = int(name.rsplit("-", 1)[-1])
        env.update(
            CAVIAR_RAY_HEAD=self.gcs_address,
            CAVIAR_NUM_CPUS=str(self.settings["cpus_per_worker"]),
        )
        gpus = self.settings["gpus"]
        if gpus is not None:
            env["CAVIAR_NUM_GPUS"] = str(gpus)
        elif index > 1:  # Ray would count the same GPUs on every node of this machine
            env["CAVIAR_NUM_GPUS"] = "0"
        return env

    # --- health -------------------------------------------------------------------

    def healthy(self, name: str) -> bool:
        if name == "driver":
            from orchestrator.service.client import ping

            return ping(self.state.socket_path) is not None
        if name.startswith("ray-worker"):
            # Its agent answers, and the head counts it: nodes join in any order, so worker k
            # is taken as joined once the head and k workers are alive.
            index = int(name.rsplit("-", 1)[-1])
            return (
                services.check_health("ray-worker", self.env(name), timeout_s=2.0)
                and len(self.alive_nodes()) >= 1 + index
            )
        service = "ray-head" if name == "ray-head" else "mlflow"
        return services.check_health(service, self.env(name), timeout_s=2.0)

    def alive_nodes(self) -> list[dict[str, Any]]:
        """The Ray nodes the head reports alive."""
        return services.alive_ray_nodes(self.dashboard_url, self.token)


# --- up ----------------------------------------------------------------------------------


def up(options: UpOptions, out: TextIO, state: StateDir | None = None) -> int:
    """Start what is not running (everything, the first time), wait for it, print where."""
    state = state or StateDir()
    with state.locked():
        records = state.read()
        recorded = records.settings if records else {}
        if records and not _same_boot(records):
            print(
                f"caviar: stale state in {state.path} (from before a reboot); cleaning it", file=out
            )
            _stop_all(state, records, out=None)
            records = None
        settings = _settings(state, options, recorded)
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
    records.settings["boot_id"] = _boot_id()
    records.settings["up_since"] = time.time()
    records.settings["caviar"] = identity.code_identity()  # what the driver will run
    print(f"caviar: starting the service in {state.path} ...", file=out, flush=True)
    started = time.monotonic()
    names = topology.names()
    topology.assign_ports(names)
    try:
        _start_and_wait(state, records, topology, names, out)
    except BaseException:
        _stop_all(state, records, out=None)
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
        _stop_all(state, records, out=None)
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
        left = _left_of_group(state, record)
        if left and not record.alive():
            print(
                f"caviar: {record.name}'s leader (pid {record.pid}) had died, but its process "
                f"group still ran (pids {', '.join(map(str, left))}); ending it",
                file=out,
            )
        _stop_records([record], state, out=None)
    _kill_stragglers(state, names)
    _wait_ports_free(stopped)


def _left_of_group(state: StateDir, record: ProcessRecord) -> list[int]:
    """What still runs of a dead record's process group, and is the service's own."""
    return group_members(record.pid, record.start_ticks, marker(state.path, record.name))


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


# --- status ------------------------------------------------------------------------------


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
        if not _same_boot(records):
            health = "dead"
        elif not record.alive():
            left = _left_of_group(state, record)
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


# --- down --------------------------------------------------------------------------------


def down(out: TextIO, state: StateDir | None = None) -> int:
    """Stop every process ``caviar up`` started, by its recorded id, and check none is left."""
    state = state or StateDir()
    with state.locked():
        records = state.read()
        if not records or not records.processes:
            print(f"caviar: nothing to stop in {state.path}", file=out)
            _clean_runtime(state)
            return 0
        _stop_all(state, records, out)
    return 0


def _stop_all(state: StateDir, records: ServiceRecords, out: TextIO | None) -> None:
    order = ["driver", *sorted(n for n in records.processes if n.startswith("ray-worker")),
             "ray-head", "mlflow"]  # fmt: skip
    chosen = [records.processes[n] for n in order if n in records.processes]
    stopped = _stop_records(chosen, state, out)
    _kill_stragglers(state, None)
    left = marked_processes(marker(state.path, ""))
    open_ports = _wait_ports_closed(records)
    state.remove_records()
    _clean_runtime(state)
    if out is not None:
        if left or open_ports:
            raise ServiceError(
                f"stopped {len(stopped)} process(es) but some remain (pids {left}, "
                f"ports still open {open_ports}); see caviar ps"
            )
        names = ", ".join(f"{r.name} ({r.pid})" for r in stopped) or "nothing was running"
        print(f"caviar: stopped {names}; no process or port of the service is left", file=out)


def _stop_records(
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
    left = [pid for r in chosen if r not in live for pid in _left_of_group(state, r)]
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


def _kill_stragglers(state: StateDir, names: list[str] | None) -> None:
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


def _clean_runtime(state: StateDir) -> None:
    """The driver's socket goes; Ray's session logs stay (0700) for whoever debugs a failure,
    as ``ray stop`` leaves /tmp/ray; the next start opens a new session beside them."""
    state.socket_path.unlink(missing_ok=True)


def _alive(records: ServiceRecords, name: str) -> bool:
    record = records.processes.get(name)
    return record is not None and record.alive()


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


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _same_boot(records: ServiceRecords) -> bool:
    recorded = records.settings.get("boot_id")
    return recorded is None or recorded == _boot_id()
