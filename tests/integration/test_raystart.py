"""The embedded Ray a sweep starts: a working cluster without the monitors and the dashboard's
API server it cannot use."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CAVIAR, clean_env, run_python_json
from ray_head import PlainHead, kill_processes_naming, plain_ray_head

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

START = """
import json
import ray
from ray._private import node as ray_node, parameter
from orchestrator.engine import raystart

before = parameter.RayParams.__init__
api_server_before = ray_node.Node.start_api_server
raystart.prepare_environment()
raystart.init_ray()

@ray.remote
def square(x):
    return x * x

node = ray._private.worker._global_node
import psutil
# The raylet starts the agent with the command it was given (the agent renames itself).
agent_commands = [
    part for p in psutil.Process().children(recursive=True) for part in p.cmdline()
    if part.startswith("--dashboard_agent_command=")
]
print(json.dumps({
    "agents_minimal": [" --minimal" in command for command in agent_commands],
    "processes": sorted(node.all_processes),
    "squares": ray.get([square.remote(i) for i in range(4)]),
    "restored": parameter.RayParams.__init__ is before,
    "api_server_restored": ray_node.Node.start_api_server is api_server_before,
    "dashboard_url": ray.get_runtime_context().get_node_id() and node.webui_url,
}))
ray.shutdown()
"""


def _start_embedded(**env: str) -> dict:
    """Start the embedded Ray in a fresh interpreter; what it started and how it went."""
    started = run_python_json(START, **env)
    assert started["squares"] == [0, 1, 4, 9]  # the cluster works
    return started


def test_a_local_cluster_starts_without_the_monitors_and_the_api_server() -> None:
    started = _start_embedded()
    assert {"gcs_server", "raylet"} <= set(started["processes"])
    assert not {"monitor", "log_monitor", "dashboard"} & set(started["processes"]), started
    assert started["dashboard_url"] is None  # Ray knows it has no dashboard
    assert started["restored"] and started["api_server_restored"]
    assert started["agents_minimal"] == [True], started  # no dashboard: its agent is minimal


def test_without_speedups_a_local_cluster_starts_as_ray_starts_it() -> None:
    """CAVIAR_NO_SPEEDUPS=1: no patched Ray internals, so the monitors and the dashboard's
    process start as Ray starts them, and the cluster works."""
    started = _start_embedded(CAVIAR_NO_SPEEDUPS="1")
    assert {"monitor", "log_monitor", "dashboard"} <= set(started["processes"]), started
    assert started["agents_minimal"] == [False], started


WARM_START = """
import json, os, sys
import ray
from orchestrator.engine import raystart

raystart.prepare_environment()
raystart.init_ray(trial_workers=True)
from ray.tune.execution import class_cache

# A trial actor's runtime environment, as Tune builds it (engine/warm.py matches it).
env_vars = dict(class_cache.DEFAULT_ENV_VARS)
env_vars.update({k: os.environ[k] for k in class_cache.ENV_VARS_TO_PROPAGATE if k in os.environ})

@ray.remote(num_cpus=1, runtime_env={"env_vars": env_vars})
class Probe:
    def __init__(self):
        # Before anything here imports them: what the worker had imported on its own.
        self.found = {m: m in sys.modules for m in ("torch", "orchestrator.engine.trial_actor",
                                                    "orchestrator.spec", "mlflow", "optuna")}

    def report(self):
        return os.getpid(), self.found

probes = [Probe.remote() for _ in range(int(ray.cluster_resources()["CPU"]))]
reports = ray.get([p.report.remote() for p in probes])
print(json.dumps({"preloaded": [found for _, found in reports],
                  "pids": sorted(pid for pid, _ in reports)}))
ray.shutdown()
"""


def test_a_sweeps_own_ray_starts_its_trial_workers_with_torch_and_the_trial_actor() -> None:
    """``caviar run`` starts its embedded Ray with the trial workers asked for at once, in
    Tune's runtime environment, importing torch and the trial actor before the first trial
    (``raystart._trial_worker_config``): an actor Tune creates lands on a worker that has
    both already, one per CPU. The worker imports nothing of the driver's (the spec's models,
    MLflow, Optuna): its imports are on the path to a cold sweep's first result."""
    started = run_python_json(WARM_START)
    assert started["preloaded"], started
    for found in started["preloaded"]:
        assert found == {
            "torch": True,
            "orchestrator.engine.trial_actor": True,
            "orchestrator.spec": False,
            "mlflow": False,
            "optuna": False,
        }, started
    assert len(set(started["pids"])) == len(started["pids"])  # one worker per actor


SMALL_SPEC = """\
name: beside-a-cluster
data: {source: iris}
space:
  learning_rate: {scale: log, low: 0.01, high: 0.5}
search: {num_trials: 3, seed: 0}
scheduler: {kind: fifo, max_epochs: 2}
"""


@pytest.fixture(scope="module")
def plain_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlainHead]:
    with plain_ray_head(tmp_path_factory.mktemp("head")) as head:
        yield head


def test_a_sweep_starts_its_own_ray_beside_a_cluster_left_by_ray_start(
    tmp_path: Path, plain_head: PlainHead
) -> None:
    """With a head from plain `ray start --head` running on the machine and no RAY_ADDRESS,
    `caviar run` must not join it (a bare ray.init() would: every trial then died unstarted);
    it starts its own Ray, as the README promises, and every trial runs."""
    (tmp_path / "spec.yaml").write_text(SMALL_SPEC)
    # A Ray the sweep starts puts its session folder under RAY_TMPDIR/ray; joining the head
    # (started with a --temp-dir of its own) would put none there.
    ray_root = Path(tempfile.mkdtemp(prefix="cv-", dir="/tmp"))
    try:
        out = subprocess.run(
            [CAVIAR, "run", "spec.yaml"],
            cwd=tmp_path,
            env=clean_env(RAY_TMPDIR=str(ray_root)),
            capture_output=True,
            text=True,
            timeout=300,
        )
        sessions = [p.name for p in (ray_root / "ray").glob("session_*") if not p.is_symlink()]
    finally:
        kill_processes_naming(ray_root)
        shutil.rmtree(ray_root, ignore_errors=True)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "trials:          3 (3 completed, 0 stopped early, 0 diverged, 0 failed)" in (
        out.stdout
    ), out.stdout[-2000:]
    assert "ActorDiedError" not in out.stderr
    assert len(sessions) == 1, sessions  # its own Ray: one new session, not the head's
    assert plain_head.process.poll() is None  # the user's cluster is untouched


def test_gpus_no_node_offers_are_named_at_once_on_a_cluster_and_refused_embedded(
    tmp_path: Path, plain_head: PlainHead
) -> None:
    """`gpus_per_trial: 0.25` where there is no GPU: embedded, exit 2 before Ray or MLflow
    start; on a cluster, a warning naming the resource within seconds of the sweep's start
    (Ctrl-C then ends it as interrupted)."""
    (tmp_path / "spec.yaml").write_text(
        SMALL_SPEC.replace(
            "name: beside-a-cluster", "name: gpus\nresources: {gpus_per_trial: 0.25}"
        )
    )
    ray_root = Path(tempfile.mkdtemp(prefix="cv-", dir="/tmp"))  # RAY_TMPDIR: see above
    try:
        refused = subprocess.run(
            [CAVIAR, "run", "spec.yaml"], cwd=tmp_path, env=clean_env(RAY_TMPDIR=str(ray_root)),
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        ray_started = (ray_root / "ray").exists()
    finally:
        kill_processes_naming(ray_root)
        shutil.rmtree(ray_root, ignore_errors=True)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "resources.gpus_per_trial: asks for 0.25 GPU per trial" in refused.stderr
    assert "gpus_per_trial: 0 to train on the CPU" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "caviar_runs").exists()
    assert not ray_started  # refused before Ray started

    waiting = subprocess.Popen(
        [CAVIAR, "run", "spec.yaml"],
        cwd=tmp_path,
        env=clean_env(RAY_ADDRESS=f"127.0.0.1:{plain_head.gcs_port}", RAY_AUTH_MODE="disabled"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    try:
        assert waiting.stdout is not None
        for line in waiting.stdout:
            lines.append(line)
            if "can run a trial" in line:
                break
        os.killpg(waiting.pid, signal.SIGINT)
        rest, _ = waiting.communicate(timeout=120)
    finally:
        if waiting.poll() is None:
            os.killpg(waiting.pid, signal.SIGKILL)
            waiting.wait()
    output = "".join(lines) + rest
    assert "no node of this cluster (1 alive) can run a trial" in output, output[-3000:]
    assert "asks for 0.25 GPU per trial; the most any node offers is 0" in output
    assert waiting.returncode == 130 and "0 of 3 trials ended, 3 remain" in output, output[-2000:]
