"""The compose topology as local processes on loopback: Ray head, Ray worker, MLflow server.

Every service starts exactly as ``docker-compose.yml`` starts it, through
``python -m orchestrator.cluster.services SERVICE``; only the environment differs (free loopback
ports, a short per-test Ray temp folder). The MLflow server's backend store is what compose
deploys, a PostgreSQL server (started for the module by ``tests/postgres.py``) that the
service reaches through the compose file's ``POSTGRES_*`` variables. Where no PostgreSQL
server binaries are installed (and ``CAVIAR_TEST_REQUIRE_POSTGRES`` is unset) the cluster
runs on SQLite instead, and the tests that need PostgreSQL skip, saying what to install.

Each service runs in its own process group (``start_new_session``), and teardown kills those
groups, then any straggler whose command line names this cluster's temp folder, then the
PostgreSQL server, also when a test fails.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import clean_env
from ports import free_ports
from postgres import PostgresServer, postgres_server, unavailable

from orchestrator.cluster.services import alive_ray_nodes

REPO = Path(__file__).resolve().parents[2]
SERVICE = [sys.executable, "-m", "orchestrator.cluster.services"]
START_TIMEOUT_S = 120.0
WORKER_ATTEMPTS = 3  # a worker that fails to join is started again, on fresh ports


@dataclass
class LocalCluster:
    """Start, wait for, and always tear down the three services."""

    root: Path
    postgres: PostgresServer | None = None  # the MLflow server's store; SQLite when None
    token: str = field(default_factory=lambda: secrets.token_hex(24))
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        (
            self.gcs_port,
            self.dashboard_port,
            self.client_port,
            self.mlflow_port,
            *self.head_agent_ports,
        ) = free_ports(8)
        self.worker_agent_ports = free_ports(4)
        self.storage = self.root / "shared" / "caviar_runs"  # the compose file's shared volume
        self.storage.mkdir(parents=True)

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def mlflow_uri(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    def base_env(self) -> dict[str, str]:
        """What every service gets: the token, explicit auth mode, this venv's tools first."""
        return clean_env(
            PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN=self.token,
            CAVIAR_NODE_IP="127.0.0.1",
        )

    def service_env(self, service: str) -> dict[str, str]:
        env = self.base_env()
        if service == "mlflow":
            env.pop("RAY_AUTH_TOKEN")  # least privilege, as in the compose file
            env.update(
                CAVIAR_MLFLOW_PORT=str(self.mlflow_port),
                CAVIAR_MLFLOW_WORKERS="1",
                CAVIAR_MLFLOW_ARTIFACTS=str(self.root / "mlartifacts"),
            )
            if self.postgres is not None:
                # compose's variables; orchestrator.cluster.services builds the URI from them
                env.update(self.postgres.service_env())
            else:
                env["MLFLOW_BACKEND_STORE_URI"] = f"sqlite:///{self.root / 'mlflow.db'}"
            return env
        env.update(
            CAVIAR_NUM_CPUS="1",
            CAVIAR_OBJECT_STORE_MEMORY=str(150 * 1024 * 1024),
            CAVIAR_RAY_TEMP_DIR=str(self.root / ("h" if service == "ray-head" else "w")),
        )
        # Each node gets its own agent ports: the defaults collide when two share a host.
        ports = iter(self.head_agent_ports if service == "ray-head" else self.worker_agent_ports)
        env.update(
            CAVIAR_DASHBOARD_AGENT_PORT=str(next(ports)),
            CAVIAR_DASHBOARD_AGENT_GRPC_PORT=str(next(ports)),
            CAVIAR_METRICS_PORT=str(next(ports)),
            CAVIAR_RUNTIME_ENV_AGENT_PORT=str(next(ports)),
        )
        if service == "ray-head":
            env.update(
                CAVIAR_RAY_PORT=str(self.gcs_port),
                CAVIAR_DASHBOARD_HOST="127.0.0.1",
                CAVIAR_DASHBOARD_PORT=str(self.dashboard_port),
                CAVIAR_RAY_CLIENT_PORT=str(self.client_port),
                MLFLOW_TRACKING_URI=self.mlflow_uri,  # the cluster's store, as in compose
                CAVIAR_STORAGE_PATH=str(self.storage),
            )
        else:
            env["CAVIAR_RAY_HEAD"] = f"127.0.0.1:{self.gcs_port}"
        return env

    def start_service(self, service: str) -> None:
        log = open(self.root / f"{service}.log", "wb")  # noqa: SIM115 (closed by the child)
        self.processes[service] = subprocess.Popen(
            [*SERVICE, service],
            cwd=self.root,
            env=self.service_env(service),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def start(self) -> None:
        self.start_service("mlflow")  # the slowest to answer; it starts while Ray does
        self.start_service("ray-head")
        self.wait_for(lambda: self.healthy("ray-head"), "the Ray head's dashboard")
        self.start_worker()
        self.wait_for(lambda: self.healthy("ray-worker"), "the Ray worker's health check")
        self.wait_for(lambda: self.healthy("mlflow"), "the MLflow server")

    def start_worker(self) -> None:
        """Start the worker until it joins; each failed try's logs go into the final error."""
        failures = []
        for attempt in range(1, WORKER_ATTEMPTS + 1):
            self.start_service("ray-worker")
            try:
                self.wait_for(lambda: len(self.alive_nodes()) == 2, "two alive Ray nodes")
                return
            except RuntimeError as error:
                failures.append(f"attempt {attempt}: {error}\n{self.ray_logs('w')}")
                _signal_group(self.processes["ray-worker"].pid, signal.SIGKILL)
                self.processes["ray-worker"].wait(timeout=30)
                self.worker_agent_ports = free_ports(4)
        raise RuntimeError("the Ray worker never joined:\n" + "\n".join(failures))

    def ray_logs(self, node: str, tail: int = 1500) -> str:
        """Tails of a node's raylet and agent logs: why a node failed to start is there."""
        logs = self.root / node / "session_latest" / "logs"
        parts = []
        for name in ("raylet.out", "raylet.err", "dashboard_agent.log", "runtime_env_agent.log"):
            path = logs / name
            if path.exists():
                parts.append(f"--- {node}/{name}\n{path.read_text(errors='replace')[-tail:]}")
        return "\n".join(parts)

    def healthy(self, service: str) -> bool:
        result = subprocess.run(
            [*SERVICE, "health", service], env=self.service_env(service), cwd=REPO, check=False
        )
        return result.returncode == 0

    def alive_nodes(self) -> list[dict[str, object]]:
        """The Ray nodes the head reports alive."""
        return alive_ray_nodes(self.address, self.token)

    def wait_for(self, ready: object, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited ({process.returncode}):\n{self.log(name)}\n"
                        f"{self.ray_logs('h')}"
                    )
            if ready():  # type: ignore[operator]
                return
            time.sleep(1.0)
        raise RuntimeError(f"timed out waiting for {what}:\n{self.logs()}")

    def log(self, service: str, tail: int = 4000) -> str:
        path = self.root / f"{service}.log"
        return path.read_text(errors="replace")[-tail:] if path.exists() else ""

    def logs(self) -> str:
        parts = [f"--- {name}\n{self.log(name)}" for name in self.processes]
        if self.postgres is not None:
            parts.append(f"--- postgres\n{self.postgres.log()}")
        return "\n".join(parts)

    def stop(self) -> None:
        """SIGTERM every group (the worker first), SIGKILL what is left, then stragglers."""
        for name in ("ray-worker", "ray-head", "mlflow"):
            if name in self.processes:
                _signal_group(self.processes[name].pid, signal.SIGTERM)
        deadline = time.monotonic() + 5.0  # the head drains for up to 30 s; no need here
        while time.monotonic() < deadline and any(
            _group_alive(p.pid) for p in self.processes.values()
        ):
            time.sleep(0.5)
        for process in self.processes.values():
            _signal_group(process.pid, signal.SIGKILL)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for pid in leftover_pids(self.root):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def leftover_pids(root: Path) -> list[int]:
    """Processes whose command line names this cluster's folder: ours, by construction."""
    found = []
    marker = str(root).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker in cmdline:
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def local_cluster() -> Iterator[LocalCluster]:
    """One cluster for a module's tests, on PostgreSQL where it can run; torn down whatever
    happens (the cluster first, then the PostgreSQL server its MLflow server writes to)."""
    with ExitStack() as stack:
        postgres = None
        if unavailable() is None:
            postgres = stack.enter_context(postgres_server())
        root = Path(tempfile.mkdtemp(prefix="cvr-", dir="/tmp"))  # short: Unix sockets live here
        stack.callback(shutil.rmtree, root, ignore_errors=True)
        cluster = LocalCluster(root, postgres=postgres)
        stack.callback(cluster.stop)
        cluster.start()
        yield cluster
