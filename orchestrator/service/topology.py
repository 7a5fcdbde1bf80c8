"""The service's topology: docker-compose.yml's, as local processes on loopback.

Each process is started the way compose starts it (``python -m orchestrator.cluster.services
SERVICE``, the one definition of each command) and differs only in its environment:

- ``ray-head``: GCS, dashboard and job API; no CPUs of its own (it drives, workers train);
- ``ray-worker-1`` .. ``ray-worker-N``: the trial nodes, each with its own temp folder and
  agent ports (two nodes on one machine collide on Ray's default agent port);
- ``mlflow``: the tracking server and its UI, on SQLite under the state folder by default;
- ``driver``: the warm sweep driver ``caviar run`` hands its spec to (``driver.py``).

The token reaches Ray and the driver in their environment only. Every process listens on
127.0.0.1 alone, Ray's included (``services.LOCAL_ONLY_ENV``). :class:`Topology` derives
every port, folder, command and environment from the settings recorded in the state folder,
so ``caviar up``, ``ps`` and ``down`` see the same service.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator import speedups
from orchestrator.cluster import services
from orchestrator.environment import ENVIRONMENT_DEFAULTS
from orchestrator.errors import CaviarError
from orchestrator.service import ports
from orchestrator.service.fixed_nodes import DASHBOARD_ENV
from orchestrator.service.state import MARKER_ENV, StateDir, marker

SERVICE = (sys.executable, "-m", "orchestrator.cluster.services")
DRIVER = (sys.executable, "-m", "orchestrator.service.driver")
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


def settings_for(state: StateDir, given: UpOptions, recorded: Mapping[str, Any]) -> dict[str, Any]:
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
