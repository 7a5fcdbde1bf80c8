"""Faults during a sweep: a Ray worker killed mid-trial, a tracking server that goes away.

Real processes only: the worker is a real Ray actor process killed with SIGKILL, the tracking
server a real `mlflow server` stopped and started again on the same port.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CAVIAR, clean_env
from mlflow import MlflowClient
from mlflow_db import query
from ports import free_port

from orchestrator.store.journal import read_journal

pytestmark = pytest.mark.integration


def _spec(name: str, max_failures: int, tracking: str = "", trials: int = 2) -> str:
    return f"""
name: {name}
data: {{source: digits, seed: 0}}
space:
  learning_rate: {{values: [0.05, 0.1]}}
fixed: {{optimizer: sgd, momentum: 0.9, batch_size: 16, hidden_units: 256, layers: 3}}
search: {{num_trials: {trials}, seed: 0, max_concurrent: 2}}
scheduler: {{kind: fifo, max_epochs: 30}}
# A report per epoch: the kill must find a trial mid-way, which a batch of epochs (the
# default report_every_s of 1 s) can hide when a whole trial trains within one batch.
storage: {{checkpoint_every_s: 0.3, report_every_s: 0, max_failures: {max_failures}}}
{tracking}
"""


def _max_steps(db: Path) -> dict[str, int]:
    sql = "SELECT run_uuid, MAX(step) FROM metrics WHERE key = 'epoch_seconds' GROUP BY run_uuid"
    return dict(query(db, sql))  # type: ignore[arg-type]


def _trial_workers(session: int) -> list[int]:
    """Trial actor processes of this sweep only (other sweeps may run on the machine)."""
    out = subprocess.run(
        ["pgrep", "-s", str(session), "-f", "ray::CaviarTrainable"], capture_output=True, text=True
    )
    return [int(p) for p in out.stdout.split()]


def _start(folder: Path, spec: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [CAVIAR, "run", spec],
        cwd=folder,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _finish(process: subprocess.Popen[str], timeout: float = 300) -> str:
    try:
        out, _ = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    return out


def _training(folder: Path) -> dict[int, int]:
    """Trials that have reported epoch 3 or later (and no later than 20: most of their epochs
    are still to train), hold a checkpoint and have not ended, from the sweep's journal
    (written as results arrive; MLflow lags it by the tracker's batching), with the worker
    process their newest epoch came from."""
    epochs: dict[int, int] = {}
    workers: dict[int, int] = {}
    checkpointed: set[int] = set()
    ended: set[int] = set()
    for journal in folder.glob("caviar_runs/*/*/journal.jsonl"):
        for line in journal.read_text().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line still being written
            if event.get("e") == "result":
                epochs[event["i"]] = int(event["r"].get("epoch", 0))
                workers[event["i"]] = int(event["r"].get("worker_pid", 0))
            elif event.get("e") == "checkpoint":
                checkpointed.add(event["i"])
            elif event.get("e") == "end":
                ended.add(event["i"])
    return {
        i: workers[i]
        for i, epoch in epochs.items()
        if 3 <= epoch <= 20 and i in checkpointed and i not in ended
    }


def _restarts(journal: Path) -> list[tuple[int, int, int]]:
    """(trial, epoch of its last checkpoint, first epoch reported after) for each time a trial's
    epochs start coming from another worker process: a restart. A checkpoint's epoch is the
    last one its trial reported before the checkpoint's line."""
    found = []
    pid: dict[int, int] = {}
    last_epoch: dict[int, int] = {}
    saved_at: dict[int, int] = {}
    for line in journal.read_text().splitlines():
        event = json.loads(line)
        index = event.get("i")
        if event["e"] == "checkpoint":
            saved_at[index] = last_epoch.get(index, 0)
        elif event["e"] == "result":
            epoch, worker = int(event["r"]["epoch"]), int(event["r"]["worker_pid"])
            if index in pid and pid[index] != worker:
                found.append((index, saved_at.get(index, 0), epoch))
            pid[index], last_epoch[index] = worker, epoch
    return found


def _kill_a_worker_mid_trial(folder: Path, session: int) -> int:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        workers = set(_trial_workers(session))
        # the worker a trial trains in now, by its newest epoch: killing only actors that
        # pgrep finds could hit an idle cached one while the training one trains on
        training = set(_training(folder).values()) & workers
        if training:
            for pid in workers:  # every trial actor of this sweep, the training one included
                os.kill(pid, signal.SIGKILL)
            return len(workers)
        time.sleep(0.05)
    raise AssertionError("no trial reached epoch 3 with a live worker")


def _children(folder: Path, experiment: str) -> list:
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=100)
    return [r for r in runs if "mlflow.parentRunId" in r.data.tags], client


def test_a_killed_worker_is_retried_from_its_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(_spec("retry", max_failures=2))
    process = _start(tmp_path, "s.yaml")
    _kill_a_worker_mid_trial(tmp_path, process.pid)
    out = _finish(process)
    assert process.returncode == 0, out[-3000:]
    children, client = _children(tmp_path, "retry")
    assert len(children) == 2
    for child in children:
        assert child.data.tags["caviar.outcome"] == "completed"
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_accuracy")]
        assert sorted(steps) == list(range(1, 31))  # replayed epochs are not logged twice
    # Retried, in a new worker, from where its last checkpoint left it (not from epoch 1).
    (journal,) = tmp_path.glob("caviar_runs/retry/*/journal.jsonl")
    restarts = _restarts(journal)
    assert restarts, "no trial was restarted in another worker"
    assert all(first == saved + 1 for _, saved, first in restarts), restarts
    assert any(saved >= 1 for _, saved, _ in restarts), restarts


def test_after_its_retries_a_trial_fails_with_the_error_and_the_sweep_goes_on(
    tmp_path: Path,
) -> None:
    (tmp_path / "s.yaml").write_text(_spec("noretry", max_failures=0, trials=3))
    process = _start(tmp_path, "s.yaml")
    _kill_a_worker_mid_trial(tmp_path, process.pid)
    out = _finish(process)
    assert process.returncode == 0, out[-3000:]
    children, _ = _children(tmp_path, "noretry")
    outcomes = sorted(c.data.tags["caviar.outcome"] for c in children)
    assert len(outcomes) == 3 and "failed" in outcomes and "completed" in outcomes
    assert f"{outcomes.count('failed')} failed" in out
    failed = next(c for c in children if c.data.tags["caviar.outcome"] == "failed")
    assert failed.info.status == "FAILED"
    assert failed.data.tags.get("caviar.error")


# --- the tracking server goes away mid-sweep -----------------------------------------------


def _start_mlflow(folder: Path, port: int) -> subprocess.Popen[bytes]:
    mlflow = str(Path(sys.executable).parent / "mlflow")
    process = subprocess.Popen(
        [
            mlflow,
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{folder / 'server.db'}",
            "--artifacts-destination",
            str(folder / "artifacts"),
        ],
        cwd=folder,
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return process
        except OSError:
            time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    raise AssertionError("mlflow server did not come up")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture
def server_port() -> Iterator[int]:
    yield free_port()


def test_tracking_server_outage_loses_nothing(tmp_path: Path, server_port: int) -> None:
    uri = f"http://127.0.0.1:{server_port}"
    (tmp_path / "s.yaml").write_text(_spec("outage", 2, f"tracking: {{uri: '{uri}'}}"))
    server = _start_mlflow(tmp_path, server_port)
    process = None
    try:
        process = _start(tmp_path, "s.yaml")
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not _max_steps(tmp_path / "server.db"):
            time.sleep(0.3)
        _stop(server)  # gone mid-sweep ...
        assert process.poll() is None, "the sweep ended before the server went away"
        time.sleep(6)
        server = _start_mlflow(tmp_path, server_port)  # ... and back
        out = _finish(process)
        assert process.returncode == 0, out[-3000:]
        assert "WARNING" not in out  # nothing left undelivered
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("outage")
        runs = client.search_runs([exp.experiment_id], max_results=100)
        parent = next(r for r in runs if r.data.tags.get("caviar.kind") == "sweep")
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert len(children) == 2
        # The trials' own results (the driver's journal) against what MLflow holds.
        (journal_path,) = tmp_path.glob("caviar_runs/outage/*/journal.jsonl")
        reported = read_journal(journal_path).trials
        logged = 0
        for child in children:
            history = client.get_metric_history(child.info.run_id, "val_accuracy")
            assert sorted(m.step for m in history) == list(range(1, 31))
            own = reported[int(child.data.tags["caviar.trial_index"])].history
            assert {m.step: m.value for m in history} == {
                e["epoch"]: pytest.approx(e["val_accuracy"]) for e in own
            }
            logged += len(history)
        assert logged == parent.data.metrics["epochs_trained"] == 60
        assert {r.info.status for r in runs} == {"FINISHED"}
    finally:
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        _stop(server)
