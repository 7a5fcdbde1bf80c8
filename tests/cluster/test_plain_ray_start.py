"""`caviar submit` to a two-node cluster built by hand with Ray's own `ray start`.

The cluster is what Ray's docs, and a new user, build on one machine: `ray start --head`
with a temp folder, then `ray start --address HEAD` with its own dashboard-agent port and no
temp folder. Such a second node takes the head's temp folder, so both nodes' runtime-env
agents unpack a job's `working_dir` into the same folder: when the driver connects, the
second node's agent deletes and unpacks again the folder the driver runs in. A driver whose
current directory was deleted cannot import torch ("Intel oneMKL FATAL ERROR: Cannot load
.../libtorch_cpu.so", exit 2). `tests/cluster/test_local_cluster.py` starts each node with
its own temp folder (through `orchestrator.cluster.services`) and never met this.

The head runs without MLFLOW_TRACKING_URI, and a stand-alone `mlflow server` on loopback takes
the sweep's runs when the spec names it. The same cluster shows that a sweep without a
tracking server is refused on the cluster before it trains, instead of logging into the job's
temporary folder. Every process started here is killed at the end (its process group, then
any process whose environment carries this cluster's marker), also on failure; `ray stop` is
never called, since it would stop every Ray on the machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import clean_env, run_caviar
from mlflow import MlflowClient
from ports import free_ports

pytestmark = [pytest.mark.cluster, pytest.mark.integration]

BIN = Path(sys.executable).parent
START_TIMEOUT_S = 150.0
WORKER_ATTEMPTS = 3  # a worker that times out joining (a loaded 2-core box) is started again
MARKER = "CAVIAR_PLAIN_CLUSTER"  # in every process this module starts, and their children
N_TRIALS = 4
SPEC = """
name: {name}
data: {{source: digits, seed: 0}}
space:
  learning_rate: {{scale: log, low: 0.01, high: 0.3}}
fixed: {{optimizer: sgd, momentum: 0.9, hidden_units: 32, layers: 1, batch_size: 64}}
search: {{num_trials: {trials}, seed: 1}}
scheduler: {{kind: fifo, max_epochs: 3}}
resources: {{cpus_per_trial: 1}}
storage: {{checkpoint_every_s: 0}}
"""


@dataclass
class PlainCluster:
    """A Ray head, a Ray worker and an MLflow server started as a user would, by hand."""

    root: Path
    groups: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        (
            self.gcs_port,
            self.dashboard_port,
            self.client_port,
            self.head_agent_port,
            self.worker_agent_port,
            self.mlflow_port,
        ) = free_ports(6)

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def mlflow_uri(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    def env(self) -> dict[str, str]:
        return clean_env(
            PATH=os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),
            RAY_AUTH_MODE="disabled",
            **{MARKER: str(self.root)},
        )

    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        """Start a command in a new process group; `ray start` leaves its daemons in it."""
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 (closed by the child)
        process = subprocess.Popen(
            argv,
            cwd=self.root,
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.groups.append(process.pid)
        return process

    def ray_start(self, name: str, argv: list[str]) -> None:
        """Run `ray start` to its end; the daemons it leaves stay in its process group."""
        process = self.spawn(name, [str(BIN / "ray"), "start", *argv])
        try:
            code = process.wait(timeout=START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            code = None
        if code != 0:
            raise RuntimeError(f"`ray start` ({name}) failed ({code}):\n{self.log(name)}")

    def start(self) -> None:
        self.spawn(
            "mlflow",
            [
                str(BIN / "mlflow"), "server", "--host", "127.0.0.1",
                "--port", str(self.mlflow_port), "--workers", "1",
                "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
                "--artifacts-destination", str(self.root / "mlartifacts"),
            ],
        )  # fmt: skip
        memory = ["--object-store-memory", str(150 * 1024 * 1024)]
        self.ray_start(
            "head",
            [
                "--head", f"--port={self.gcs_port}", "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard_port}", "--num-cpus=1",
                f"--temp-dir={self.root / 'ray'}", "--disable-usage-stats",
                # Not in Ray's docs' steps; fixed defaults would collide with other Rays here.
                f"--ray-client-server-port={self.client_port}",
                f"--dashboard-agent-listen-port={self.head_agent_port}", *memory,
            ],
        )  # fmt: skip
        self.start_worker(memory)
        self.wait_for(self.mlflow_healthy, "the MLflow server")

    def start_worker(self, options: list[str]) -> None:
        """The second node, as Ray's docs start it: the head's address, no temp folder."""
        failures = []
        for attempt in range(1, WORKER_ATTEMPTS + 1):
            argv = [
                f"--address=127.0.0.1:{self.gcs_port}", "--num-cpus=1",
                f"--dashboard-agent-listen-port={self.worker_agent_port}",
                "--disable-usage-stats", *options,
            ]  # fmt: skip
            try:
                self.ray_start("worker", argv)
                self.wait_for(lambda: len(self.alive_nodes()) == 2, "two alive Ray nodes")
                return
            except RuntimeError as error:
                failures.append(f"attempt {attempt}: {str(error)[-1500:]}")
                _signal_group(self.groups[-1], signal.SIGKILL)  # this try's worker
                self.worker_agent_port = free_ports(1)[0]
        raise RuntimeError("the Ray worker never joined:\n" + "\n".join(failures))

    def alive_nodes(self) -> list[dict[str, Any]]:
        try:
            with urllib.request.urlopen(f"{self.address}/api/v0/nodes?limit=100", timeout=5) as r:
                nodes = json.load(r).get("data", {}).get("result", {}).get("result", [])
        except (urllib.error.URLError, OSError, ValueError):
            return []
        return [n for n in nodes if n.get("state") == "ALIVE"]

    def mlflow_healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.mlflow_uri}/health", timeout=5) as reply:
                return bool(reply.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def wait_for(self, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if ready():
                return
            time.sleep(1.0)
        raise RuntimeError(f"timed out waiting for {what}:\n{self.logs()}")

    def job(self, job_id: str) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.address}/api/jobs/{job_id}", timeout=10) as reply:
            return dict(json.load(reply))

    def raylet_resource_dirs(self) -> list[str]:
        """Where each of this cluster's raylets has its runtime-env agent unpack jobs."""
        found = []
        for pid in self.pids():
            argv = _read(f"/proc/{pid}/cmdline").split(b"\0")
            if argv and argv[0].endswith(b"/raylet"):
                found += [
                    a.split(b"=", 1)[1].decode() for a in argv if a.startswith(b"--resource_dir=")
                ]
        return found

    def log(self, name: str, tail: int = 3000) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-tail:] if path.exists() else ""

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{self.log(name)}" for name in ("mlflow", "head", "worker"))

    def pids(self) -> list[int]:
        """Processes started here or by them: their environment carries this cluster's marker."""
        marker = f"{MARKER}={self.root}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                if marker in _read(entry / "environ").split(b"\0"):
                    found.append(int(entry.name))
        return found

    def stop(self) -> None:
        """SIGTERM the groups, SIGKILL them, then kill any marked process left (job drivers
        run in a session of their own)."""
        for group in reversed(self.groups):
            _signal_group(group, signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and self.pids():
            time.sleep(0.5)
        for group in reversed(self.groups):
            _signal_group(group, signal.SIGKILL)
        for _ in range(3):
            left = self.pids()
            if not left:
                return
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(1.0)


def _read(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError:
        return b""


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@pytest.fixture(scope="module")
def plain_cluster() -> Iterator[PlainCluster]:
    root = Path(tempfile.mkdtemp(prefix="cvp-", dir="/tmp"))  # short: Unix sockets live here
    cluster = PlainCluster(root)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def submit(cluster: PlainCluster, folder: Path, spec: str) -> subprocess.CompletedProcess[str]:
    return run_caviar(
        "submit", spec, "--address", cluster.address, "--follow",
        cwd=folder, timeout=420, RAY_AUTH_MODE="disabled",
    )  # fmt: skip


def test_a_sweep_runs_on_a_cluster_whose_two_nodes_share_one_temp_folder(
    plain_cluster: PlainCluster, tmp_path: Path
) -> None:
    # The condition this test is about: both raylets unpack jobs into one folder.
    dirs = plain_cluster.raylet_resource_dirs()
    assert len(dirs) == 2 and len(set(dirs)) == 1, dirs
    spec = SPEC.format(name="plain-ray-start", trials=N_TRIALS)
    (tmp_path / "sweep.yaml").write_text(
        spec + f"tracking: {{uri: '{plain_cluster.mlflow_uri}'}}\n"
    )

    result = submit(plain_cluster, tmp_path, "sweep.yaml")

    output = result.stdout + result.stderr
    assert "oneMKL" not in output and "Segmentation fault" not in output, output[-4000:]
    assert "Uploading package" not in output  # the job SDK's INFO lines stay quiet
    assert result.returncode == 0, output[-4000:] + plain_cluster.logs()
    assert re.search(r"caviar: job \S+ SUCCEEDED", result.stdout), result.stdout[-2000:]
    client = MlflowClient(plain_cluster.mlflow_uri)
    experiment = client.get_experiment_by_name("plain-ray-start")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == N_TRIALS
    assert all(r.info.status == "FINISHED" for r in runs), [r.info.status for r in runs]


def test_a_sweep_without_a_tracking_server_is_refused_on_the_cluster_before_training(
    plain_cluster: PlainCluster, tmp_path: Path
) -> None:
    (tmp_path / "nostore.yaml").write_text(SPEC.format(name="plain-no-store", trials=2))

    result = submit(plain_cluster, tmp_path, "nostore.yaml")

    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-4000:]
    job_id = re.search(r"submitted job (\S+)", result.stdout)
    assert job_id, output
    job = plain_cluster.job(job_id.group(1))
    assert job["status"] == "FAILED" and job["driver_exit_code"] == 2, job
    assert "job's temporary working directory" in output, output[-4000:]
    assert "MLFLOW_TRACKING_URI" in output and "tracking.uri" in output
    assert "Traceback" not in output
    # Nothing trained: no sweep started, no progress line, no run anywhere.
    assert "caviar: sweep" not in output and "running 0" not in output
    assert MlflowClient(plain_cluster.mlflow_uri).get_experiment_by_name("plain-no-store") is None
