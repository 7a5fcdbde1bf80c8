"""Kill `caviar run` with SIGKILL at three points, resume each time, and check that MLflow
ends up with the shape of an uninterrupted sweep: nothing lost, nothing twice.

The SIGKILL sweep trains fused packs (``resources.pack_size: auto``, the default): a member
killed with its pack continues from its own checkpoint, with the pack's unended members."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import CAVIAR, clean_env, run_caviar
from mlflow import MlflowClient
from mlflow_db import query

from orchestrator.engine.scheduler import HalvingScheduler
from orchestrator.store.journal import read_journal

pytestmark = pytest.mark.integration

N_TRIALS = 24
SPEC = f"""
name: digits-resume
data: {{source: digits, seed: 0}}
space:
  learning_rate: {{scale: log, low: 1.0e-3, high: 1.0}}
  momentum: {{scale: log1m, low: 0.8, high: 0.99}}
  hidden_units: {{scale: log, low: 16, high: 128, integer: true}}
fixed: {{optimizer: sgd, batch_size: 32, layers: 2}}
search: {{num_trials: {N_TRIALS}, seed: 4}}
scheduler: {{kind: asha, grace_period: 2, reduction_factor: 3, max_epochs: 20}}
storage: {{checkpoint_every_s: 0.5}}
"""


def _children_ended(db: Path) -> tuple[int, int]:
    """(child runs, child runs ended) straight from the SQLite file, cheap enough to poll."""
    rows = query(
        db,
        "SELECT r.status FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
        "WHERE t.key = 'mlflow.parentRunId' AND r.lifecycle_stage = 'active'",
    )
    return len(rows), sum(1 for (status,) in rows if status != "RUNNING")


def _run_until(folder: Path, args: list[str], kill_when, timeout: float = 300) -> str:
    """Start caviar; SIGKILL its whole process group once ``kill_when`` holds. Returns how it
    ended: "killed", "finished" (exit status), or "timed out"."""
    process = subprocess.Popen(
        [CAVIAR, *args],
        cwd=folder,
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    try:
        while process.poll() is None and time.monotonic() < deadline:
            if kill_when(*_children_ended(folder / "mlflow.db")):
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                return "killed"
            time.sleep(0.2)
        if process.poll() is None:
            return "timed out"
        return f"finished ({process.returncode}) at {_children_ended(folder / 'mlflow.db')}"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        subprocess.run(["pkill", "-9", "-f", f"ray.*{folder.name}"], check=False)


def test_sigkill_three_times_then_resume_leaves_one_clean_sweep(tmp_path: Path) -> None:
    (tmp_path / "spec.yaml").write_text(SPEC)
    resume = ["run", "spec.yaml", "--resume"]
    killed = [
        _run_until(tmp_path, ["run", "spec.yaml"], lambda runs, ended: runs >= 1),
        _run_until(tmp_path, resume, lambda r, ended: ended >= 6),
    ]
    # Later than the second kill: members end a pack's worth at a time, so a fixed count
    # could be jumped over.
    _, ended_before = _children_ended(tmp_path / "mlflow.db")
    killed.append(_run_until(tmp_path, resume, lambda r, ended: ended > ended_before))
    assert killed == ["killed"] * 3, f"a run was not killed as planned: {killed}"

    # A plain run now refuses to start beside the unfinished sweep, and names both choices.
    refused = run_caviar("run", "spec.yaml", cwd=tmp_path)
    assert refused.returncode == 2
    assert "--resume" in refused.stderr and "Traceback" not in refused.stderr

    final = run_caviar("run", "spec.yaml", "--resume", cwd=tmp_path)
    assert final.returncode == 0, final.stdout[-2000:] + final.stderr[-3000:]
    assert "warning" not in final.stdout + final.stderr  # the report was built, too

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("digits-resume")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("caviar.kind") == "sweep"]
    assert len(parents) == 1
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == N_TRIALS
    # Every trial has its own id, the same across the kills: its sweep's suffix and index.
    suffix = parent.data.tags["caviar.sweep_id"].rsplit("-", 1)[-1]
    for child in children:
        index = int(child.data.tags["caviar.trial_index"])
        assert child.data.tags["caviar.trial_id"] == f"{suffix}-{index:03d}"
    # A pack's members share a Ray trial id (their pack's, at its latest run), nothing else.
    packs_of_id: dict[str, set[str]] = {}
    for child in children:
        packs_of_id.setdefault(child.data.tags["caviar.ray_trial_id"], set()).add(
            child.data.tags.get("caviar.pack", child.data.tags["caviar.trial_index"])
        )
    assert all(len(packs) == 1 for packs in packs_of_id.values()), packs_of_id
    assert any("caviar.pack" in c.data.tags for c in children)  # this sweep packed
    assert sorted(int(c.data.tags["caviar.trial_index"]) for c in children) == list(range(N_TRIALS))
    assert {r.info.status for r in runs} <= {"FINISHED", "FAILED"}
    assert parent.info.status == "FINISHED"

    for child in children:
        # Even the run created just before the first kill has its params (logged on resume).
        assert {"learning_rate", "momentum", "hidden_units"} <= set(child.data.params)
        last = int(child.data.tags["caviar.last_epoch"])
        for key in ("val_accuracy", "epoch_seconds"):
            steps = [m.step for m in client.get_metric_history(child.info.run_id, key)]
            assert sorted(steps) == list(range(1, last + 1)), (key, child.data.tags)

    outcomes = Counter(c.data.tags["caviar.outcome"] for c in children)
    assert sum(outcomes.values()) == N_TRIALS
    for outcome in ("completed", "stopped_early", "diverged", "failed"):
        assert parent.data.metrics[f"trials_{outcome}"] == outcomes[outcome]
    assert outcomes["failed"] == 0
    assert 1 <= outcomes["completed"] <= N_TRIALS // 2  # ASHA still stopped most trials
    assert "test_accuracy" in parent.data.metrics

    # One ASHA across four processes: replaying every call the schedulers received, in one
    # scheduler, decides every result exactly as the live (rebuilt) schedulers did.
    (run_dir,) = [p for p in (tmp_path / "caviar_runs" / "digits-resume").iterdir() if p.is_dir()]
    journal = read_journal(run_dir / "journal.jsonl")
    assert sorted(journal.trials) == list(range(N_TRIALS))
    scheduler = HalvingScheduler(
        {}, 4, metric="val_accuracy", mode="max", time_attr="epoch", max_t=20,
        grace_period=2, reduction_factor=3,
    )  # fmt: skip
    decisions = scheduler.replay(journal.scheduler_calls)
    assert [live for live, _ in decisions] == [again for _, again in decisions]
    assert sum(1 for live, _ in decisions if live == "STOP") >= N_TRIALS // 2
    print(
        f"kills survived: 3; children {len(children)}; outcomes {dict(outcomes)}; "
        f"ASHA decisions replayed: {len(decisions)}"
    )


def _interrupt(folder: Path, args: list[str], after_ended: int, signals: int) -> tuple[int, str]:
    """Start caviar; once ``after_ended`` children ended, send its process group SIGINT
    (as a terminal's Ctrl-C does) ``signals`` times, a moment apart. Returns (exit, stderr)."""
    process = subprocess.Popen(
        [CAVIAR, *args],
        cwd=folder,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while process.poll() is None and time.monotonic() < deadline:
            if _children_ended(folder / "mlflow.db")[1] >= after_ended:
                break
            time.sleep(0.2)
        assert process.poll() is None, "the sweep ended before it could be interrupted"
        for _ in range(signals):
            os.killpg(process.pid, signal.SIGINT)
            time.sleep(0.5)
        out, err = process.communicate(timeout=120)
        return process.returncode, out + err
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        subprocess.run(["pkill", "-9", "-f", f"ray.*{folder.name}"], check=False)


def test_ctrl_c_ends_a_sweep_as_interrupted_and_resume_finishes_it(tmp_path: Path) -> None:
    # Unpacked (pack_size 1): the SIGKILL test above resumes fused packs (auto, the default).
    unpacked = SPEC.replace("digits-resume", "digits-ctrl-c") + "resources: {pack_size: 1}\n"
    (tmp_path / "spec.yaml").write_text(unpacked)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")

    # One Ctrl-C: the sweep stops as interrupted, not as if it had finished.
    code, output = _interrupt(tmp_path, ["run", "spec.yaml"], after_ended=3, signals=1)
    assert code == 130, output[-3000:]
    assert "interrupted" in output and "remain" in output, output[-3000:]
    assert "caviar run spec.yaml --resume" in output
    assert "Tuner.restore" not in output and "Resume experiment with" not in output
    assert "finished in" not in output and "test accuracy" not in output
    assert "Traceback" not in output, output[-3000:]
    experiment = client.get_experiment_by_name("digits-ctrl-c")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    (parent,) = [r for r in runs if r.data.tags.get("caviar.kind") == "sweep"]
    assert parent.info.status == "KILLED"
    assert not {"test_accuracy", "trials_completed"} & set(parent.data.metrics)
    assert not any(k.startswith("importance.") for k in parent.data.metrics)
    assert "RUNNING" not in {r.info.status for r in runs}
    ended_before = sum(1 for r in runs if r.data.tags.get("caviar.outcome"))
    assert 3 <= ended_before < N_TRIALS
    marker = next((tmp_path / "caviar_runs" / "digits-ctrl-c").glob("*/caviar_sweep.json"))
    assert '"status": "interrupted"' in marker.read_text()

    # Ctrl-C twice: the second stops the clean-up at once; nothing journaled is lost.
    code, output = _interrupt(
        tmp_path, ["run", "spec.yaml", "--resume"], after_ended=ended_before + 3, signals=2
    )
    assert code == 130, output[-3000:]  # whether the second came during the clean-up or after
    assert "--resume" in output and "Traceback" not in output, output[-3000:]

    final = run_caviar("run", "spec.yaml", "--resume", cwd=tmp_path)
    assert final.returncode == 0, final.stdout[-2000:] + final.stderr[-3000:]
    assert "warning" not in final.stdout + final.stderr  # the report was built, too
    assert f"trials:          {N_TRIALS} (" in final.stdout
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    (parent,) = [r for r in runs if r.data.tags.get("caviar.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED" and "test_accuracy" in parent.data.metrics
    assert sorted(int(c.data.tags["caviar.trial_index"]) for c in children) == list(range(N_TRIALS))
    assert {r.info.status for r in runs} <= {"FINISHED", "FAILED"}
    assert sum(parent.data.metrics[f"trials_{o}"] for o in ("completed", "stopped_early",
               "diverged", "failed")) == N_TRIALS  # fmt: skip
