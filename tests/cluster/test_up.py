"""``caviar up`` / ``caviar run`` / ``caviar down`` with the real processes, start to finish.

One service for the module, in a state folder of its own (``CAVIAR_HOME``), on free ports,
started over a stale state folder (records of processes that no longer exist). The tests then
run against it in the order they are written, each one phase of the service's life: it
answers a second ``caviar up``, keeps its token out of every argv, log and world-readable file,
ignores another state folder's ``caviar down``, starts trial workers with torch imported ahead,
runs two sweeps in one warm driver process whose runs land in its MLflow server, refuses at
once a GPU ask its CPU-only nodes can never hold, runs a user's edited ``models.py`` as edited,
ends a sweep on Ctrl-C and resumes it, takes a ``caviar submit``, reports a killed worker and
an MLflow server whose leader alone was killed (its uvicorn child still serving on the port)
and gets them back with ``caviar up``; last, ``caviar down`` leaves no process (by the ids
recorded and by the marker every service's processes carry) and no port open. A phase that
fails fails alone; the teardown stops whatever is left, also on failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import CAVIAR, clean_env, run_caviar
from ports import free_port

from orchestrator import speedups
from orchestrator.service.client import ping
from orchestrator.service.ports import listening
from orchestrator.service.state import StateDir, marked_processes, marker

pytestmark = [pytest.mark.cluster, pytest.mark.integration]

SPEC = """
name: {name}
data: {{source: iris, seed: 0}}
space:
  learning_rate: {{scale: log, low: 0.01, high: 0.5}}
fixed: {{epochs: 3, hidden_units: 8, layers: 1, batch_size: 32}}
search: {{num_trials: 3, seed: 0}}
scheduler: {{kind: fifo}}
resources: {{cpus_per_trial: 1}}
"""
SERVICES = ("ray-head", "mlflow", "driver", "ray-worker-1")  # --workers 1


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("caviar-home")
    yield folder
    run_caviar("down", cwd=folder, CAVIAR_HOME=str(folder), timeout=120)  # whatever is left
    for pid in marked_processes(marker(StateDir(folder).path, "")):
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(StateDir(folder).runtime_dir(), ignore_errors=True)  # Ray's session logs


@dataclass(frozen=True)
class Service:
    """The module's service: its state folder, its MLflow server's port, what ``caviar up``
    printed, and the driver process ``caviar up`` started."""

    home: Path
    mlflow_port: int
    up_output: str
    driver_pid: int


@pytest.fixture(scope="module")
def service(home: Path) -> Service:
    # A stale folder: records of processes gone long ago (a reboot).
    StateDir(home).create()
    stale = {"pid": 2**22 + 7, "start_ticks": 1, "started_at": 0.0, "log": "x", "ports": {}}
    (home / "services.json").write_text(
        json.dumps({"settings": {}, "processes": {"ray-head": {"name": "ray-head", **stale}}})
    )
    mlflow_port = free_port()
    started = caviar(
        home,
        "up",
        "--workers",
        "1",
        "--cpus-per-worker",
        "1",
        "--gpus",
        "0",  # CPU-only on any machine: a GPU ask can never be held
        "--mlflow-port",
        str(mlflow_port),
    )
    assert started.returncode == 0, started.stdout + started.stderr
    return Service(home, mlflow_port, started.stdout, records(home)["driver"]["pid"])


def caviar(home: Path, *args: str, cwd: Path | None = None, timeout: float = 240) -> Any:
    return run_caviar(*args, cwd=cwd or home, CAVIAR_HOME=str(home), timeout=timeout)


def records(home: Path) -> dict[str, Any]:
    return json.loads((home / "services.json").read_text())["processes"]


def test_up_cleans_a_stale_folder_and_starts_every_service(service: Service) -> None:
    assert "stale state" in service.up_output
    started = records(service.home)
    assert sorted(started) == sorted(SERVICES)
    assert [name for name, r in started.items() if not _running(r["pid"])] == []
    for name in SERVICES:  # progress, as each answers
        assert re.search(rf"^  {name} +ready after +\d+\.\d s$", service.up_output, re.M), name
    assert listening(service.mlflow_port)
    assert f"MLflow UI:     http://127.0.0.1:{service.mlflow_port}" in service.up_output
    assert "Ray dashboard: http://127.0.0.1:" in service.up_output
    answer = ping(StateDir(service.home).socket_path)
    assert answer is not None and answer["pid"] == service.driver_pid


def test_a_second_up_finds_it_up_and_ps_finds_it_healthy(service: Service) -> None:
    before = records(service.home)
    again = caviar(service.home, "up")
    assert again.returncode == 0 and "already up" in again.stdout
    assert records(service.home) == before  # nothing started again
    assert caviar(service.home, "ps").returncode == 0


def test_the_token_stays_secret(service: Service) -> None:
    _token_stays_secret(service.home)


def test_another_folders_down_touches_nothing_of_it(service: Service, tmp_path: Path) -> None:
    """Another user's (another folder's) down."""
    before = records(service.home)
    other = tmp_path / "other-home"
    assert "nothing to stop" in caviar(other, "down", cwd=tmp_path).stdout
    assert caviar(service.home, "up", "--status").returncode == 0
    assert [name for name, r in before.items() if not _running(r["pid"])] == []


@pytest.mark.skipif(not speedups.enabled(), reason="prestart and preload are speed-ups")
def test_trial_workers_wait_with_torch_imported_ahead(service: Service) -> None:
    """What makes the service warm on the workers' side: ``caviar up`` asks each node for idle
    trial workers, and the head has every worker import torch and the trial actor first."""
    asked = re.search(
        r"^  (\d+) trial worker\(s\) starting, torch imported ahead$", service.up_output, re.M
    )
    assert asked is not None and int(asked.group(1)) >= 1, service.up_output
    _wait_until(lambda: _warm_workers(service.home) != [], timeout_s=120)


def test_two_sweeps_run_in_one_warm_driver_into_its_mlflow(
    service: Service, tmp_path: Path
) -> None:
    """Two sweeps from two folders: both on the service, both in its MLflow server, both run
    by the one driver process ``caviar up`` started (its imports paid once), each starting on
    workers the driver had started ahead after the sweep before."""
    socket_path = StateDir(service.home).socket_path
    port = service.mlflow_port
    for name in ("svc-one", "svc-two"):
        if speedups.enabled():  # the workers of this sweep are there before it is sent
            _wait_until(lambda: _warm_workers(service.home) != [], timeout_s=120)
        folder = tmp_path / name
        folder.mkdir()
        (folder / "spec.yaml").write_text(SPEC.format(name=name))
        ran = caviar(service.home, "run", "spec.yaml", cwd=folder)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        # (Only while the checkout is unchanged: a service serves the code it started with.)
        assert ran.stdout.startswith("caviar: running on the service in"), ran.stdout
        assert f"runs table:      http://127.0.0.1:{port}/#/experiments/" in ran.stdout
        assert not (folder / "mlflow.db").exists()  # nothing logged beside the spec
        assert not (folder / "mlruns").exists()
        assert _runs_on_server(port, name) == 1 + 3  # the parent and its trials
        # the report's plots and page follow the summary into MLflow
        _wait_until(lambda name=name: "report.html" in _report_files(port, name))
        assert "learning_curves.png" in _report_files(port, name)
    answer = ping(socket_path)
    assert answer is not None and answer["pid"] == service.driver_pid  # the same process
    assert records(service.home)["driver"]["pid"] == service.driver_pid
    driver_log = Path(records(service.home)["driver"]["log"]).read_text(errors="replace")
    assert driver_log.count("caviar-driver: ready in") == 1, driver_log[-3000:]  # started once


def test_a_gpu_ask_is_refused_at_once(service: Service, tmp_path: Path) -> None:
    """A trial no node of the service can hold is a spec error, as without the service,
    not a sweep pending forever (nothing joins caviar up's nodes)."""
    home = service.home
    folder = tmp_path / "svc-gpu"
    folder.mkdir()
    spec = SPEC.format(name="svc-gpu").replace(
        "{cpus_per_trial: 1}", "{cpus_per_trial: 1, gpus_per_trial: 0.25}"
    )
    (folder / "spec.yaml").write_text(spec)
    ran = caviar(home, "run", "spec.yaml", cwd=folder, timeout=90)  # it waited until killed
    assert ran.returncode == 2, ran.stdout + ran.stderr
    assert ran.stdout.startswith("caviar: running on the service in"), ran.stdout
    assert (
        "resources.gpus_per_trial: asks for 0.25 GPU per trial; the most any node offers is 0"
        in ran.stderr
    ), ran.stderr
    assert "the service cannot run one trial" in ran.stderr
    assert not (folder / "caviar_runs").exists()  # refused before anything started


USER_MODEL = """
from trainables.config import MlpConfig
from trainables.registry import TrainableDefinition
from trainables.train import TrainingSession


class Config(MlpConfig):
{fields}


def session(config, tensors, device):
    return TrainingSession({{k: v for k, v in config.items() if k != "tag"}}, tensors, device)


MODEL = TrainableDefinition(
    name="user-mlp",
    description="the MLP, as a user's own module",
    config_model=Config,
    metrics={{"val_accuracy": "max", "val_loss": "min"}},
    make_session=session,
)
"""


def test_an_edited_models_py_runs_as_edited(service: Service, tmp_path: Path) -> None:
    """The warm driver sees the user's models.py as it is now: after an edit that adds a
    parameter, a spec setting it is validated and run with the new code."""
    home, mlflow_port = service.home, service.mlflow_port
    folder = tmp_path / "svc-model"
    folder.mkdir()
    spec = SPEC.format(name="svc-model") + "trainable: models:MODEL\n"
    (folder / "models.py").write_text(USER_MODEL.format(fields="    pass"))
    (folder / "spec.yaml").write_text(spec)
    ran = caviar(home, "run", "spec.yaml", cwd=folder)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    (folder / "models.py").write_text(USER_MODEL.format(fields='    tag: str = "v1"'))
    (folder / "spec.yaml").write_text(spec.replace("batch_size: 32}", "batch_size: 32, tag: v2}"))
    ran = caviar(home, "run", "spec.yaml", cwd=folder)
    assert ran.returncode == 0, ran.stdout + ran.stderr  # the old module lacked `tag`
    assert ran.stdout.startswith("caviar: running on the service in"), ran.stdout
    import mlflow

    server = mlflow.MlflowClient(f"http://127.0.0.1:{mlflow_port}")
    experiment = server.get_experiment_by_name("svc-model")
    runs = server.search_runs([experiment.experiment_id])
    trials = [r for r in runs if r.data.tags.get("caviar.kind") != "sweep"]
    assert sorted(str(r.data.params.get("tag")) for r in trials) == ["None"] * 3 + ["v2"] * 3


def test_ctrl_c_on_the_service_then_resume(service: Service, tmp_path: Path) -> None:
    """Ctrl-C in the client's terminal ends the driver's sweep as an interrupted local one
    would (resumable, the parent run KILLED, nothing journaled lost); --resume on the service
    finishes that same parent run."""
    home, mlflow_port = service.home, service.mlflow_port
    folder = tmp_path / "svc-ctrlc"
    folder.mkdir()
    spec = SPEC.format(name="svc-ctrlc").replace("epochs: 3", "epochs: 400")
    (folder / "spec.yaml").write_text(spec.replace("num_trials: 3", "num_trials: 4"))
    client = subprocess.Popen(
        [CAVIAR, "run", "spec.yaml"],
        cwd=folder,
        env=clean_env(CAVIAR_HOME=str(home)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_until(lambda: _journaled_results(folder) >= 5, timeout_s=120)
        client.send_signal(signal.SIGINT)
        output, _ = client.communicate(timeout=120)
    finally:
        if client.poll() is None:
            client.kill()
    assert client.returncode == 130, output
    assert "interrupted after" in output and "caviar run spec.yaml --resume" in output, output
    done_before = _journaled_results(folder)
    resumed = caviar(home, "run", "spec.yaml", "--resume", cwd=folder)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert resumed.stdout.startswith("caviar: running on the service in"), resumed.stdout
    assert "resuming svc-ctrlc" in resumed.stdout
    assert _journaled_results(folder) > done_before
    import mlflow

    server = mlflow.MlflowClient(f"http://127.0.0.1:{mlflow_port}")
    experiment = server.get_experiment_by_name("svc-ctrlc")
    runs = server.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("caviar.kind") == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # the same run, finished
    assert len(runs) == 1 + 4


def test_submit_to_the_service(service: Service, tmp_path: Path) -> None:
    """`caviar submit` works against the service unchanged: Ray's job API on the head's
    dashboard, the token from the environment, the results in the service's MLflow."""
    home, mlflow_port = service.home, service.mlflow_port
    folder = tmp_path / "svc-submit"
    folder.mkdir()
    (folder / "spec.yaml").write_text(SPEC.format(name="svc-submit"))
    dashboard = records(home)["ray-head"]["ports"]["dashboard"]
    token = (home / "auth_token").read_text().strip()
    submitted = run_caviar(
        "submit",
        "spec.yaml",
        "--address",
        f"http://127.0.0.1:{dashboard}",
        "--follow",
        cwd=folder,
        timeout=300,
        CAVIAR_HOME=str(home),
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
    )
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    assert re.search(r"submitted job \S+", submitted.stdout), submitted.stdout
    assert _runs_on_server(mlflow_port, "svc-submit") == 1 + 3


def test_a_killed_worker_and_mlflow_leader_are_reported_and_restarted(service: Service) -> None:
    """A killed worker, and an MLflow server whose leader alone was killed (its uvicorn child
    lives on in the service's group, on the port): reported, then restarted by ``caviar up``,
    which leaves the rest alone; the runs outlive their server."""
    home = service.home
    runs_before = _all_runs_on_server(service.mlflow_port)
    before = records(home)
    os.killpg(before["ray-worker-1"]["pid"], signal.SIGKILL)
    os.kill(before["mlflow"]["pid"], signal.SIGKILL)
    _wait_until(lambda: caviar(home, "ps").returncode == 1)
    status = caviar(home, "ps").stdout
    assert re.search(r"^  ray-worker-1 +\d+ +dead ", status, re.M), status
    assert re.search(r"^  mlflow +\d+ +degraded ", status, re.M), status
    assert "mlflow: its leader" in status and "still answers" in status, status
    repaired = caviar(home, "up")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "restarting" in repaired.stdout
    assert "mlflow's leader" in repaired.stdout and "ending it" in repaired.stdout
    assert caviar(home, "ps").returncode == 0
    after = records(home)
    assert after["ray-head"]["pid"] == before["ray-head"]["pid"]  # the rest was left alone
    for name in ("mlflow", "ray-worker-1"):
        assert after[name]["pid"] != before[name]["pid"] and _running(after[name]["pid"]), name
    assert not _running(before["mlflow"]["pid"])
    assert _all_runs_on_server(service.mlflow_port) == runs_before  # the store outlived it


def test_down_leaves_no_process_and_no_port(service: Service) -> None:
    """Last: nothing left, by recorded ids, by marker, by port."""
    home = service.home
    after = records(home)
    pids = [r["pid"] for r in after.values()]
    recorded_ports = [p for r in after.values() for p in r["ports"].values()]
    stopped = caviar(home, "down")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "no process or port of the service is left" in stopped.stdout
    assert not (home / "services.json").exists()
    assert marked_processes(marker(StateDir(home).path, "")) == []
    assert [pid for pid in pids if _running(pid)] == []
    assert [port for port in recorded_ports if listening(port)] == []


def _journaled_results(folder: Path) -> int:
    return sum(
        path.read_text().count('"e":"result"')
        for path in folder.glob("caviar_runs/svc-ctrlc/*/journal.jsonl")
    )


def _token_stays_secret(home: Path) -> None:
    token = (home / "auth_token").read_text().strip()
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "auth_token").stat().st_mode) == 0o600
    state = StateDir(home)
    processes = marked_processes(marker(state.path, ""))
    assert len(processes) >= 5  # head, worker, MLflow, driver and what they started
    for pid in processes:
        assert token.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
    for folder in (home, state.runtime_dir()):
        for path in folder.rglob("*"):
            if not path.is_file() or path.is_socket() or path.name == "auth_token":
                continue
            mode = path.stat().st_mode
            if path.suffix in (".log", ".out", ".err", ".json", ".txt") or mode & stat.S_IROTH:
                assert token.encode() not in path.read_bytes(), path
    assert (
        not (Path.home() / ".ray" / "auth_token").exists()
        or token not in (Path.home() / ".ray" / "auth_token").read_text()
    )


def _warm_workers(home: Path) -> list[int]:
    """The worker node's idle Ray workers with torch already imported (``ray::IDLE``, the
    name Ray gives a worker without a task or actor; torch's library mapped)."""
    warm = []
    for pid in marked_processes(marker(StateDir(home).path, "ray-worker-1")):
        try:
            idle = Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::IDLE")
            if idle and "libtorch" in Path(f"/proc/{pid}/maps").read_text():
                warm.append(pid)
        except OSError:  # it ended meanwhile
            continue
    return warm


def _all_runs_on_server(port: int) -> int:
    import mlflow

    client = mlflow.MlflowClient(f"http://127.0.0.1:{port}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    return len(client.search_runs(experiments, max_results=10_000))


def _runs_on_server(port: int, experiment: str) -> int:
    import mlflow

    client = mlflow.MlflowClient(f"http://127.0.0.1:{port}")
    found = client.get_experiment_by_name(experiment)
    return len(client.search_runs([found.experiment_id])) if found else 0


def _report_files(port: int, experiment: str) -> list[str]:
    import mlflow

    client = mlflow.MlflowClient(f"http://127.0.0.1:{port}")
    found = client.get_experiment_by_name(experiment)
    (parent,) = client.search_runs([found.experiment_id], "tags.`caviar.kind` = 'sweep'")
    return [Path(f.path).name for f in client.list_artifacts(parent.info.run_id, "report")]


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_until(condition: Any, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.5)
