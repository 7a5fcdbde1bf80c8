"""The cluster's service commands (Ray head, Ray worker, MLflow server), defined once.

``docker-compose.yml`` and the local-process cluster test both start every service as
``python -m orchestrator.cluster.services SERVICE``: this module reads the service's settings
from the environment and execs the command built here. The compose file and the test differ only in
the environment they pass (container hostnames and fixed ports there, loopback and free ports
here), so the commands they run cannot drift apart.

Secure unless told otherwise: every address defaults to 127.0.0.1 (a container says
``CAVIAR_NODE_IP=auto`` / ``0.0.0.0`` and publishes its ports on the host's loopback only), a
Ray node on 127.0.0.1 listens on loopback alone (``LOCAL_ONLY_ENV`` below), Ray refuses to start
without ``RAY_AUTH_MODE=token`` and a token unless ``RAY_AUTH_MODE=disabled`` is set on purpose,
and secrets travel in the environment, never in an argv (which ``ps`` and the logs show). The
MLflow backend store URI, which holds the database password, is handed to ``mlflow server`` as
``MLFLOW_BACKEND_STORE_URI``.

Usage::

    python -m orchestrator.cluster.services ray-head|ray-worker|mlflow [--dry-run]
    python -m orchestrator.cluster.services health ray-head|ray-worker|mlflow
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from orchestrator import environment
from orchestrator.errors import CaviarError

ENTRYPOINT = ("python", "-m", "orchestrator.cluster.services")
LOOPBACK = "127.0.0.1"
DEFAULT_GCS_PORT = 6379
DEFAULT_DASHBOARD_PORT = 8265
DEFAULT_RAY_CLIENT_PORT = 10001
DEFAULT_DASHBOARD_AGENT_PORT = 52365  # Ray's default dashboard-agent listen port
DEFAULT_MLFLOW_PORT = 5000
DEFAULT_MLFLOW_WORKERS = 2
SECRET_ENV = ("RAY_AUTH_TOKEN", "POSTGRES_PASSWORD", "MLFLOW_BACKEND_STORE_URI")
# Ray's switch for a Ray that lives on one machine (named for Windows and macOS, where it is off
# by default). Off ("0"), Ray takes 127.0.0.1 as the node's address, and every server of a node
# whose address is 127.0.0.1 listens on loopback alone: GCS, raylet, worker and driver gRPC
# ports, dashboard agent, runtime-env agent, metrics, Ray client server. On (Linux's default),
# `ray start` replaces --node-ip-address 127.0.0.1 by the machine's address, and the GCS, raylet
# and worker ports, the agents and the client server listen on the machine's interfaces.
# A process that connects to such a node by 127.0.0.1 needs it off too (else Ray dials the
# machine's address, where nothing listens): caviar up's driver and the jobs the head starts
# have it; a Ray client of your own says RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0.
LOCAL_ONLY_ENV = environment.LOCAL_ONLY_ENV
_LOOPBACK_NAMES = (LOOPBACK, "localhost")
# `ray start ARGS` for a worker node on 127.0.0.1 alone (`python -c JOIN_ON_LOOPBACK ARGS`).
# With LOCAL_ONLY_ENV=0, Ray 2.60's `ray start --address` refuses to join any cluster ("Multi-node
# Ray clusters are not supported on Windows and OSX"); with it on, it replaces 127.0.0.1, the
# node's address and the head's, by the machine's. Both come from one constant: this lifts the
# refusal and keeps 127.0.0.1 as the switch off does; the node's processes inherit the switch off.
JOIN_ON_LOOPBACK = (
    "import sys; import ray._private.ray_constants as c, ray._private.services as s; "
    "c.ENABLE_RAY_CLUSTER = True; s.get_node_ip_address = lambda address=None: '127.0.0.1'; "
    "from ray.scripts.scripts import main; sys.argv[0] = 'ray'; sys.exit(main())"
)

# Optional Ray ports: setting them lets two nodes share one machine (the default dashboard
# agent port is fixed, so a second node on the same host collides with the first).
_RAY_PORT_FLAGS = {
    "CAVIAR_DASHBOARD_AGENT_PORT": "--dashboard-agent-listen-port",
    "CAVIAR_DASHBOARD_AGENT_GRPC_PORT": "--dashboard-agent-grpc-port",
    "CAVIAR_METRICS_PORT": "--metrics-export-port",
    "CAVIAR_RUNTIME_ENV_AGENT_PORT": "--runtime-env-agent-port",
    "CAVIAR_NODE_MANAGER_PORT": "--node-manager-port",
    "CAVIAR_OBJECT_MANAGER_PORT": "--object-manager-port",
}


class ServiceConfigError(CaviarError):
    """A service cannot start with the settings in its environment."""

    exit_code = 2


@dataclass(frozen=True)
class ServiceCommand:
    """What to exec: the argv (never a secret in it) and the variables to add to the env."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    loopback: bool = False  # a Ray node on 127.0.0.1 alone: LOCAL_ONLY_ENV=0 when it runs

    def describe(self) -> str:
        """The command as a log line, secrets redacted."""
        shown = [f"{k}={redact(k, v)}" for k, v in sorted(self.env.items())]
        line = " ".join([*shown, shlex.join(self.argv)])
        return f"{line}  (loopback only: {LOCAL_ONLY_ENV}=0)" if self.loopback else line


# --- settings ----------------------------------------------------------------------------


class Settings:
    """Typed access to the environment; every mistake names the variable to fix."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ

    def text(self, name: str, default: str | None = None) -> str | None:
        value = self.environ.get(name, "").strip()
        return value or default

    def required(self, name: str, why: str) -> str:
        value = self.text(name)
        if value is None:
            raise ServiceConfigError(f"{name} is not set; {why}")
        return value

    def port(self, name: str, default: int | None = None) -> int | None:
        value = self.integer(name, default)
        if value is not None and not 0 < value < 65536:
            raise ServiceConfigError(f"{name} must be a port number (1-65535), got {value}")
        return value

    def integer(self, name: str, default: int | None = None) -> int | None:
        value = self.text(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise ServiceConfigError(f"{name} must be a whole number, got {value!r}") from None
        if number < 0:
            raise ServiceConfigError(f"{name} must be >= 0, got {number}")
        return number


# --- Ray ---------------------------------------------------------------------------------


def ray_head(environ: Mapping[str, str]) -> ServiceCommand:
    """``ray start --head``: GCS, dashboard (the jobs API) and, with CPUs, trials too."""
    settings = Settings(environ)
    check_ray_auth(environ)
    dashboard_host = settings.text("CAVIAR_DASHBOARD_HOST", LOOPBACK)
    argv = [
        "ray", "start", "--head", "--block", "--disable-usage-stats",
        "--port", str(settings.port("CAVIAR_RAY_PORT", DEFAULT_GCS_PORT)),
        "--include-dashboard", "true",
        "--dashboard-host", str(dashboard_host),
        "--dashboard-port", str(settings.port("CAVIAR_DASHBOARD_PORT", DEFAULT_DASHBOARD_PORT)),
        "--ray-client-server-port",
        str(settings.port("CAVIAR_RAY_CLIENT_PORT", DEFAULT_RAY_CLIENT_PORT)),
    ]  # fmt: skip
    preload = settings.text("CAVIAR_RAY_PRELOAD_MODULES")
    if preload:  # every worker process of the cluster imports these before its first task
        modules = [m.strip() for m in preload.split(",") if m.strip()]
        argv += ["--system-config", json.dumps({"preload_python_modules": modules})]
    return ServiceCommand(argv + _ray_node_options(settings), loopback=_on_loopback(settings))


def ray_worker(environ: Mapping[str, str]) -> ServiceCommand:
    """``ray start --address HEAD``: a node that runs trials."""
    settings = Settings(environ)
    check_ray_auth(environ)
    head = settings.required(
        "CAVIAR_RAY_HEAD", "set it to the head's GCS address, HOST:PORT (e.g. ray-head:6379)"
    )
    argv = ["ray", "start", "--address", head, "--block", "--disable-usage-stats"]
    return ServiceCommand(argv + _ray_node_options(settings), loopback=_on_loopback(settings))


def _on_loopback(settings: Settings) -> bool:
    return settings.text("CAVIAR_NODE_IP", LOOPBACK) in _LOOPBACK_NAMES


def _ray_node_options(settings: Settings) -> list[str]:
    """Options every node takes: its address, its resources, its ports, its temp folder."""
    options: list[str] = []
    node_ip = settings.text("CAVIAR_NODE_IP", LOOPBACK)
    if node_ip != "auto":  # auto: Ray picks the address other hosts reach (containers, pods)
        options += ["--node-ip-address", str(node_ip)]
    for name, flag in (("CAVIAR_NUM_CPUS", "--num-cpus"), ("CAVIAR_NUM_GPUS", "--num-gpus")):
        value = settings.integer(name)
        if value is not None:
            options += [flag, str(value)]
    memory = settings.integer("CAVIAR_OBJECT_STORE_MEMORY")
    if memory is not None:
        options += ["--object-store-memory", str(memory)]
    for name, flag in _RAY_PORT_FLAGS.items():
        port = settings.port(name)
        if port is not None:
            options += [flag, str(port)]
    temp_dir = settings.text("CAVIAR_RAY_TEMP_DIR")
    if temp_dir is not None:
        options += ["--temp-dir", temp_dir]
    return options


def check_ray_auth(environ: Mapping[str, str]) -> None:
    """Refuse to start an open Ray node by accident.

    Ray's job API runs any code for whoever reaches it; with ``RAY_AUTH_MODE=token`` every
    node, driver and client must carry the same token. ``disabled`` must be said explicitly.
    """
    mode = environ.get("RAY_AUTH_MODE", "").strip()
    if mode == "disabled":
        print(
            "caviar-service: WARNING: RAY_AUTH_MODE=disabled: anyone who reaches this node "
            "can run code on it",
            file=sys.stderr,
        )
        return
    if mode != "token":
        raise ServiceConfigError(
            f"RAY_AUTH_MODE is {mode or 'not set'}; set RAY_AUTH_MODE=token and the cluster's "
            "token in RAY_AUTH_TOKEN (see .env.example), or RAY_AUTH_MODE=disabled on purpose"
        )
    if environ.get("RAY_AUTH_TOKEN", "").strip():
        return
    token_path = environ.get("RAY_AUTH_TOKEN_PATH", "").strip()
    if token_path and Path(token_path).is_file() and Path(token_path).read_text().strip():
        return
    raise ServiceConfigError(
        "RAY_AUTH_MODE=token but no token: set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH to a "
        "file holding it), the same on every node; generate one with "
        "python -c 'import secrets; print(secrets.token_hex(32))'"
    )


# --- MLflow ------------------------------------------------------------------------------


def mlflow_server(environ: Mapping[str, str]) -> ServiceCommand:
    """``mlflow server`` with artifacts served by the server itself (clients need no bucket)."""
    settings = Settings(environ)
    argv = [
        "mlflow", "server",
        "--host", str(settings.text("CAVIAR_MLFLOW_HOST", LOOPBACK)),
        "--port", str(settings.port("CAVIAR_MLFLOW_PORT", DEFAULT_MLFLOW_PORT)),
        "--workers", str(settings.integer("CAVIAR_MLFLOW_WORKERS", DEFAULT_MLFLOW_WORKERS)),
    ]  # fmt: skip
    artifact_root = settings.text("CAVIAR_MLFLOW_ARTIFACT_ROOT")
    if artifact_root:  # artifacts in a folder every client reaches itself (one machine)
        argv += ["--default-artifact-root", artifact_root, "--no-serve-artifacts"]
    else:
        artifacts = str(settings.text("CAVIAR_MLFLOW_ARTIFACTS", "./mlartifacts"))
        argv += ["--serve-artifacts", "--artifacts-destination", artifacts]
    allowed_hosts = settings.text("CAVIAR_MLFLOW_ALLOWED_HOSTS")
    if allowed_hosts:  # a hostname such as `mlflow` is not in MLflow's default allow-list
        argv += ["--allowed-hosts", allowed_hosts]
    app = settings.text("CAVIAR_MLFLOW_APP")
    if app:  # e.g. basic-auth: MLflow's own login; clients send MLFLOW_TRACKING_USERNAME/PASSWORD
        argv += ["--app-name", app]
    return ServiceCommand(argv, {"MLFLOW_BACKEND_STORE_URI": backend_store_uri(settings)})


def backend_store_uri(settings: Settings) -> str:
    """``MLFLOW_BACKEND_STORE_URI`` as given, else PostgreSQL from the ``POSTGRES_*`` settings."""
    given = settings.text("MLFLOW_BACKEND_STORE_URI")
    if given:
        return given
    host = settings.text("POSTGRES_HOST")
    if host is None:
        raise ServiceConfigError(
            "no MLflow backend store: set POSTGRES_HOST, POSTGRES_USER, POSTGRES_PASSWORD and "
            "POSTGRES_DB (PostgreSQL), or MLFLOW_BACKEND_STORE_URI (e.g. sqlite:////data/mlflow.db)"
        )
    why = "the MLflow server needs it to reach PostgreSQL at POSTGRES_HOST"
    user = quote(settings.required("POSTGRES_USER", why), safe="")
    password = quote(settings.required("POSTGRES_PASSWORD", why), safe="")
    database = quote(settings.required("POSTGRES_DB", why), safe="")
    port = settings.port("POSTGRES_PORT", 5432)
    # The driver named: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, and the image
    # (deploy/Dockerfile) ships psycopg2, MLflow's documented PostgreSQL driver.
    return f"postgresql+psycopg2://{user}:{password}@{host}:{port}/{database}"


def redact(name: str, value: str) -> str:
    """Hide a secret variable's value, or the password inside a URI."""
    if name in ("RAY_AUTH_TOKEN", "POSTGRES_PASSWORD"):
        return "***"
    parts = urlsplit(value)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return value


# --- health checks (compose healthchecks call these) -------------------------------------


def health_url(service: str, environ: Mapping[str, str]) -> str:
    """A URL that answers 200 without a token once the service is up."""
    settings = Settings(environ)
    if service == "ray-head":
        port = settings.port("CAVIAR_DASHBOARD_PORT", DEFAULT_DASHBOARD_PORT)
        return f"http://{LOOPBACK}:{port}/api/gcs_healthz"
    if service == "ray-worker":
        port = settings.port("CAVIAR_DASHBOARD_AGENT_PORT", DEFAULT_DASHBOARD_AGENT_PORT)
        return f"http://{_reachable(settings.text('CAVIAR_NODE_IP', LOOPBACK))}:{port}/api/healthz"
    port = settings.port("CAVIAR_MLFLOW_PORT", DEFAULT_MLFLOW_PORT)
    return f"http://{_reachable(settings.text('CAVIAR_MLFLOW_HOST', LOOPBACK))}:{port}/health"


def _reachable(host: str | None) -> str:
    return LOOPBACK if host in (None, "auto", "0.0.0.0") else str(host)


def check_health(service: str, environ: Mapping[str, str], timeout_s: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(health_url(service, environ), timeout=timeout_s) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, OSError):
        return False


# --- the entrypoint ----------------------------------------------------------------------

SERVICES: dict[str, Callable[[Mapping[str, str]], ServiceCommand]] = {
    "ray-head": ray_head,
    "ray-worker": ray_worker,
    "mlflow": mlflow_server,
}


def build(service: str, environ: Mapping[str, str]) -> ServiceCommand:
    return SERVICES[service](environ)


def _executable(name: str) -> str:
    """Prefer the tool installed next to this Python (a virtualenv need not be on PATH)."""
    here = str(Path(sys.executable).parent)
    found = shutil.which(name, path=os.pathsep.join([here, os.environ.get("PATH", "")]))
    if found is None:
        raise ServiceConfigError(f"{name} is not installed here; pip install caviar installs it")
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.cluster.services",
        description="Start one caviar cluster service from settings in the environment.",
    )
    parser.add_argument("service", choices=[*SERVICES, "health"])
    parser.add_argument("target", nargs="?", choices=list(SERVICES), help="health: which one")
    parser.add_argument("--dry-run", action="store_true", help="print the command, do not run it")
    args = parser.parse_args(argv)
    try:
        if args.service == "health":
            if args.target is None:
                parser.error("health needs the service to check")
            return 0 if check_health(args.target, os.environ) else 1
        command = build(args.service, os.environ)
        if args.dry_run:
            print(command.describe())
            return 0
        print(f"caviar-service: {args.service}: {command.describe()}", file=sys.stderr, flush=True)
        executable = _executable(command.argv[0])
    except ServiceConfigError as error:
        print(f"caviar-service: error: {error}", file=sys.stderr)
        return error.exit_code
    environ = {**os.environ, **command.env}
    if command.loopback:
        environ[LOCAL_ONLY_ENV] = "0"  # every process of the node inherits it
        if args.service == "ray-worker":  # `ray start --address`, through JOIN_ON_LOOPBACK
            python = sys.executable
            os.execve(python, [python, "-c", JOIN_ON_LOOPBACK, *command.argv[1:]], environ)
    os.execve(executable, command.argv, environ)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())


def alive_ray_nodes(dashboard_url: str, token: str | None) -> list[dict[str, object]]:
    """The Ray nodes a head's dashboard reports alive (its state API wants the token); none
    when the dashboard does not answer."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"{dashboard_url}/api/v0/nodes?limit=100", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            body = json.load(reply)
    except (urllib.error.URLError, OSError, ValueError):
        return []
    nodes = body.get("data", {}).get("result", {}).get("result", [])
    return [n for n in nodes if n.get("state") == "ALIVE"]
