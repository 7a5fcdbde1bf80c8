"""A sweep of fused packs on real Ray and MLflow: every member is a trial in every way a user
or MLflow can see, and trains exactly what it would have trained alone.

(Killed-and-resumed packed sweeps: tests/integration/test_resume.py, whose SIGKILL sweep packs.)
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import run_caviar
from mlflow import MlflowClient

from orchestrator.engine.trial_actor import load_trial_state
from orchestrator.spec import load_spec
from orchestrator.spec.data import load_data
from trainables import TensorSplits
from trainables.train import TrainingSession

pytestmark = pytest.mark.integration

N_TRIALS = 16
PACK = 4
SPEC = f"""
name: packed-it
data: {{source: digits, seed: 1}}
space:
  learning_rate: {{scale: log, low: 1.0e-3, high: 1.0}}
  momentum: {{scale: log1m, low: 0.8, high: 0.99}}
  hidden_units: {{scale: log, low: 16, high: 128, integer: true}}
  bn_eval: {{values: [ewma, population]}}
fixed: {{optimizer: sgd, batch_size: 64, layers: 2}}
search: {{num_trials: {N_TRIALS}, seed: 11}}
scheduler: {{kind: asha, grace_period: 1, reduction_factor: 3, max_epochs: 9}}
resources: {{cpus_per_trial: 1, pack_size: {PACK}}}
"""
RUNGS = (1, 3)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("packed")
    (folder / "spec.yaml").write_text(SPEC)
    result = run_caviar("run", "spec.yaml", cwd=folder, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("packed-it")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    (parent,) = [r for r in runs if r.data.tags.get("caviar.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    (journal,) = folder.glob("caviar_runs/packed-it/*/journal.jsonl")
    events = [json.loads(line) for line in journal.read_text().splitlines()]
    return {
        "folder": folder,
        "stdout": result.stdout,
        "client": client,
        "parent": parent,
        "children": children,
        "events": events,
    }


def test_every_member_is_its_own_trial_and_run(sweep: dict[str, Any]) -> None:
    children = sweep["children"]
    assert sorted(int(c.data.tags["caviar.trial_index"]) for c in children) == list(range(N_TRIALS))
    packs = Counter(c.data.tags["caviar.pack"] for c in children)
    assert sorted(packs.values()) == [PACK] * (N_TRIALS // PACK)
    assert {c.data.tags["caviar.pack_size"] for c in children} == {str(PACK)}
    assert {c.info.status for c in children} == {"FINISHED"}
    # A pack's members share the network's shape and keep their own other values.
    by_pack: dict[str, list[Any]] = {}
    for child in children:
        by_pack.setdefault(child.data.tags["caviar.pack"], []).append(child.data.params)
    for members in by_pack.values():
        assert len({m["hidden_units"] for m in members}) == 1
        assert len({m["learning_rate"] for m in members}) == PACK
    outcomes = Counter(c.data.tags["caviar.outcome"] for c in children)
    assert outcomes["failed"] == 0 and outcomes["stopped_early"] >= N_TRIALS // 2
    parent = sweep["parent"]
    for outcome, count in outcomes.items():
        assert parent.data.metrics[f"trials_{outcome}"] == count
    assert parent.data.metrics["fused_packs"] == N_TRIALS // PACK
    fused, alone = parent.data.metrics["epochs_fused"], parent.data.metrics["epochs_alone"]
    assert fused + alone == parent.data.metrics["epochs_trained"] and fused >= N_TRIALS
    assert f"trial epochs:    {int(fused)} trained fused, {int(alone)} alone" in sweep["stdout"]
    assert parent.data.params["resources.pack_size"] == str(PACK)
    assert "test_accuracy" in parent.data.metrics  # the best member's checkpoint loaded
    assert (
        f"fused packs:     {N_TRIALS // PACK} packs of {PACK} (x{N_TRIALS // PACK})"
        in (sweep["stdout"])
    )


def test_each_member_stops_at_its_own_rung_and_trains_no_further(sweep: dict[str, Any]) -> None:
    client: MlflowClient = sweep["client"]
    events = sweep["events"]
    decisions: dict[int, int] = {}
    for e in events:  # a lone member's result is a "result" call, a step's members "results"
        if e["e"] == "sched" and e["op"] in ("result", "results"):
            if e["op"] == "results":
                calls = list(zip(e["k"], e["r"], e["d"], strict=True))
            else:
                calls = [(e["k"], e["r"], e.get("d"))]
            decisions.update({int(k): int(r["epoch"]) for k, r, d in calls if d == "STOP"})
    assert decisions, "ASHA stopped no member"
    results: dict[int, list[int]] = {}
    for event in events:
        if event["e"] == "result":
            results.setdefault(int(event["i"]), []).append(int(event["r"]["epoch"]))
    for child in sweep["children"]:
        index = int(child.data.tags["caviar.trial_index"])
        last = int(child.data.tags["caviar.last_epoch"])
        steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "val_loss"))
        assert steps == list(range(1, last + 1)) == results[index]
        if child.data.tags["caviar.outcome"] == "stopped_early":
            assert decisions[index] == last and last in RUNGS


def test_a_member_matches_the_same_config_trained_alone(sweep: dict[str, Any]) -> None:
    """Per-epoch loss and accuracy of members (one that went on, one stopped early, both BN
    modes where they occur) against a TrainingSession of the same config; and a member's
    checkpoint file holds the state a session of its own would have at that epoch."""
    folder: Path = sweep["folder"]
    spec = load_spec(folder / "spec.yaml")
    tensors = TensorSplits.from_splits(load_data(spec.data, folder), "cpu")
    client: MlflowClient = sweep["client"]
    by_outcome = sorted(
        sweep["children"],
        key=lambda c: (
            -int(c.data.tags["caviar.last_epoch"]),
            int(c.data.tags["caviar.trial_index"]),
        ),
    )
    chosen = [by_outcome[0], by_outcome[-1]]
    chosen += [
        c for c in by_outcome if c.data.params["bn_eval"] != chosen[0].data.params["bn_eval"]
    ][:1]
    trials = {int(e["i"]): e for e in sweep["events"] if e["e"] == "trial"}
    checkpoints = {int(e["i"]): e["path"] for e in sweep["events"] if e["e"] == "checkpoint"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the trial workers train (one CPU each): the same sums' order
    try:
        for child in chosen:
            index = int(child.data.tags["caviar.trial_index"])
            last = int(child.data.tags["caviar.last_epoch"])
            alone = TrainingSession(trials[index]["config"], tensors, "cpu")
            for epoch in range(1, last + 1):
                expected = alone.step()
                # fp32: the fused and the single model sum in different orders, and training
                # amplifies the difference epoch by epoch (1.7e-4 at epoch 8 seen here); the
                # pack's promise is 1e-4 over five epochs (tests/trainables/test_pack.py).
                tolerance = 1e-4 if epoch <= 5 else 1e-3
                for key in ("val_loss", "val_accuracy", "train_loss"):
                    history = client.get_metric_history(child.info.run_id, key)
                    (point,) = [m for m in history if m.step == epoch]
                    assert math.isclose(
                        point.value, expected[key], rel_tol=tolerance, abs_tol=1e-6
                    ), (index, epoch, key, point.value, expected[key])
            state = load_trial_state(checkpoints[index], index)
            assert state["session"]["epoch"] == last
            restored = TrainingSession(state["config"], tensors, "cpu")
            restored.load_state_dict(state["session"])
            assert restored.evaluate(tensors.x_val, tensors.y_val) == pytest.approx(
                alone.evaluate(tensors.x_val, tensors.y_val), rel=tolerance
            )
    finally:
        torch.set_num_threads(threads)
