"""A submitted sweep, stopped and resumed from the user's machine: `caviar submit`, `caviar
stop`, `caviar submit --resume`, against the compose topology as local processes (a Ray head,
a Ray worker, an MLflow server; conftest.py).

The sweep's state (journal, checkpoints) is on the cluster's shared storage, so `caviar run
SPEC --resume` on the user's machine has nothing to resume: every message that says how to
finish the stopped sweep names `caviar submit SPEC --resume --address URL`, and that command
finishes it in the same MLflow parent run. The stop itself reads as an interruption (caviar's
lines), not as Ray's crash dump.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import run_caviar
from mlflow import MlflowClient

pytestmark = [pytest.mark.cluster, pytest.mark.integration]

N_TRIALS = 6
# Each trial trains for a few seconds: the stop lands while most of them are still to come.
SPEC = f"""
name: cluster-resume
data: {{source: digits, seed: 0}}
space:
  learning_rate: {{scale: log, low: 1.0e-3, high: 1.0}}
fixed: {{optimizer: sgd, batch_size: 32, hidden_units: 16, layers: 1}}
search: {{num_trials: {N_TRIALS}, seed: 0}}
scheduler: {{kind: fifo, max_epochs: 200}}
resources: {{cpus_per_trial: 1, pack_size: 1}}
"""
CRASH_DUMP = ("SIGTERM received", "PC: @", "Traceback")


def caviar(
    cluster: Any, *args: str, cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": cluster.token}
    return run_caviar(*args, "--address", cluster.address, cwd=cwd, timeout=timeout, **env)


def _runs(client: MlflowClient) -> list[Any]:
    experiment = client.get_experiment_by_name("cluster-resume")
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], max_results=1000)


def test_a_stopped_submitted_sweep_is_finished_by_submit_resume(
    local_cluster: Any, tmp_path: Path
) -> None:
    (tmp_path / "resume.yaml").write_text(SPEC)
    client = MlflowClient(local_cluster.mlflow_uri)
    resume = f"caviar submit resume.yaml --resume --address {local_cluster.address}"

    submitted = caviar(local_cluster, "submit", "resume.yaml", cwd=tmp_path)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    job = re.search(r"submitted job (\S+)", submitted.stdout)
    assert job, submitted.stdout
    deadline = time.monotonic() + 240
    while not any(r.data.metrics for r in _runs(client) if "mlflow.parentRunId" in r.data.tags):
        assert time.monotonic() < deadline, "no trial trained in 240 s:\n" + local_cluster.logs()
        time.sleep(1.0)

    stopped = caviar(local_cluster, "stop", job.group(1), cwd=tmp_path)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.splitlines() == [
        f"job {job.group(1)}: STOPPED",
        f"  finish its sweep with:  {resume}",
    ]
    log = caviar(local_cluster, "logs", job.group(1), cwd=tmp_path).stdout
    assert "caviar: interrupted: stopping the trials" in log, log
    assert f"caviar: finish it with:  {resume}" in log, log
    assert "caviar run resume.yaml --resume" not in log
    assert not [sign for sign in CRASH_DUMP if sign in log], log
    (parent,) = [r for r in _runs(client) if r.data.tags.get("caviar.kind") == "sweep"]
    assert parent.info.status == "KILLED"

    # The command the messages named, as the user types it.
    resumed = caviar(local_cluster, *resume.split()[1:-2], "--follow", cwd=tmp_path, timeout=420)
    assert resumed.returncode == 0, resumed.stdout[-4000:] + resumed.stderr[-3000:]
    assert "entrypoint: caviar run resume.yaml --resume" in resumed.stdout
    assert "SUCCEEDED" in resumed.stdout and "Traceback" not in resumed.stderr

    runs = _runs(client)
    parents = [r for r in runs if r.data.tags.get("caviar.kind") == "sweep"]
    assert [p.info.run_id for p in parents] == [parent.info.run_id]
    assert parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(int(c.data.tags["caviar.trial_index"]) for c in children) == list(range(N_TRIALS))
    assert {c.info.status for c in children} == {"FINISHED"}
    assert parents[0].data.metrics["trials_completed"] == N_TRIALS
