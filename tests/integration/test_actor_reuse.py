"""Every trial of a sweep runs in the worker processes started for its first trials.

Tune keeps a finished trial's actor only while a trial is waiting to take it. When the limit
on live trials equalled the slots, two trials ending in the same step of Tune's loop (common
when ASHA stops most trials after a few short epochs) left one warm actor with no taker: Tune
stopped it and started a new process (a process start and torch's import, seconds with its
slot idle). Real Ray, real MLflow, a sweep of many very short trials on 2 CPUs; the journal
records the worker process of every epoch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import run_caviar

pytestmark = pytest.mark.integration

SPEC = """
name: reuse-it
data: {source: iris, val_fraction: 0.2, test_fraction: 0.2, seed: 0}
space:
  learning_rate: {scale: log, low: 1.0e-3, high: 1.0}
  hidden_units: {scale: log, low: 8, high: 32, integer: true}
fixed: {optimizer: sgd, batch_size: 128, layers: 1}
search: {strategy: random, num_trials: 40, seed: 1}
scheduler: {kind: asha, grace_period: 1, reduction_factor: 4, max_epochs: 4}
resources: {cpus_per_trial: 1}
storage: {checkpoint_every_s: 0, report_every_s: 0}
"""


def test_no_trial_needs_a_new_worker_process(tmp_path: Path) -> None:
    (tmp_path / "reuse.yaml").write_text(SPEC)
    result = run_caviar("run", "reuse.yaml", cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    (journal,) = tmp_path.glob("caviar_runs/reuse-it/*/journal.jsonl")
    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    started = {line["i"] for line in lines if line["e"] == "trial"}
    pids = {line["r"]["worker_pid"] for line in lines if line["e"] == "result"}
    assert len(started) == 40
    # One actor per slot (Ray gives the embedded cluster this machine's CPUs) for the whole
    # sweep; an actor stopped and replaced is one process more.
    slots = len(os.sched_getaffinity(0))
    assert len(pids) <= slots, f"{len(pids)} worker processes ran 40 trials on {slots} slots"
