"""The embedded Ray a sweep starts: a working cluster without the monitors and the dashboard's
API server it cannot use."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import clean_env

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

START = """
import json
import ray
from ray._private import node as ray_node, parameter
from orchestrator import raystart

before = parameter.RayParams.__init__
api_server_before = ray_node.Node.start_api_server
raystart.prepare_environment()
raystart.init_ray()

@ray.remote
def square(x):
    return x * x

node = ray._private.worker._global_node
print(json.dumps({
    "processes": sorted(node.all_processes),
    "squares": ray.get([square.remote(i) for i in range(4)]),
    "restored": parameter.RayParams.__init__ is before,
    "api_server_restored": ray_node.Node.start_api_server is api_server_before,
    "dashboard_url": ray.get_runtime_context().get_node_id() and node.webui_url,
}))
ray.shutdown()
"""


def test_a_local_cluster_starts_without_the_monitors_and_the_api_server() -> None:
    out = subprocess.run(
        [sys.executable, "-c", START],
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    started = json.loads(out.stdout.strip().splitlines()[-1])
    assert started["squares"] == [0, 1, 4, 9]
    assert {"gcs_server", "raylet"} <= set(started["processes"])
    assert not {"monitor", "log_monitor", "dashboard"} & set(started["processes"]), started[
        "processes"
    ]
    assert started["dashboard_url"] is None  # Ray knows it has no dashboard
    assert started["restored"] and started["api_server_restored"]


SMALL_SPEC = """\
name: beside-a-cluster
data: {source: iris}
space:
  learning_rate: {scale: log, low: 0.01, high: 0.5}
search: {num_trials: 3, seed: 0}
scheduler: {kind: fifo, max_epochs: 2}
"""


def test_a_sweep_starts_its_own_ray_beside_a_cluster_left_by_ray_start(tmp_path: Path) -> None:
    """With a head from plain `ray start --head` running on the machine and no RAY_ADDRESS,
    `caviar run` must not join it (a bare ray.init() would: every trial then died unstarted);
    it starts its own Ray, as the README promises, and every trial runs."""
    import os
    import signal

    from ports import free_ports

    gcs_port, agent_port, dashboard_port = free_ports(3)
    # short: Ray's socket paths under it must fit AF_UNIX's 107 bytes
    temp_dir = Path(tempfile.mkdtemp(prefix="cv-", dir="/tmp"))
    ray_bin = str(Path(sys.executable).parent / "ray")
    head = subprocess.Popen(
        [
            ray_bin,
            "start",
            "--head",
            "--block",
            f"--port={gcs_port}",
            "--num-cpus=1",
            "--include-dashboard=false",
            f"--dashboard-port={dashboard_port}",
            f"--dashboard-agent-listen-port={agent_port}",
            f"--temp-dir={temp_dir}",
            "--disable-usage-stats",
        ],
        # a loaded machine can take longer than Ray's default to register the raylet
        env=clean_env(RAY_AUTH_MODE="disabled", RAY_raylet_start_wait_time_s="120"),
        stdout=(tmp_path / "head.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait_for_gcs(gcs_port, head, tmp_path / "head.log")
        (tmp_path / "spec.yaml").write_text(SMALL_SPEC)
        out = subprocess.run(
            [str(Path(sys.executable).parent / "caviar"), "run", "spec.yaml"],
            cwd=tmp_path,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
        assert "trials:          3 (3 completed, 0 stopped early, 0 diverged, 0 failed)" in (
            out.stdout
        ), out.stdout[-2000:]
        assert "ActorDiedError" not in out.stderr
        assert head.poll() is None  # the user's cluster is untouched
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(head.pid, signal.SIGKILL)
        _kill_processes_naming(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for_gcs(
    port: int, head: subprocess.Popen[bytes], log: Path, timeout_s: float = 180
) -> None:
    import socket
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert head.poll() is None, "ray start --head exited:\n" + log.read_text()[-3000:]
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                time.sleep(3)  # the raylet registers just after the GCS listens
                return
        time.sleep(0.5)
    raise AssertionError(f"ray start --head did not listen on {port} in {timeout_s} s")


def _kill_processes_naming(folder: Path) -> None:
    """Ray processes that outlived their group (the raylet's workers) still name the folder."""
    import os
    import signal

    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(folder) in cmdline:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass
