"""Population-based training through real Ray into real MLflow: copies that are exact, the
lineage on the parent and the children, and a kill at a generation's end that resumes to the
same decisions and results."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import CAVIAR, clean_env, run_caviar
from mlflow import MlflowClient

pytestmark = pytest.mark.integration

# factors [1, 1] and no resampling: a copy continues with its donor's values exactly, so from
# the copy on it must train exactly as its donor does (weights, optimizer moments, BN
# statistics and batch order all copied), until the next generation.
SPEC = """
name: iris-pbt
data: {source: iris, seed: 1}
space:
  learning_rate: {scale: log, low: 1.0e-3, high: 1.0}
  momentum: {scale: log1m, low: 0.5, high: 0.99}
fixed: {optimizer: sgd, layers: 1, hidden_units: 16, batch_size: 16}
search: {strategy: random, num_trials: 6, seed: 4}
scheduler:
  kind: pbt
  interval: 2
  quantile: 0.25
  max_epochs: 6
  perturbation: {factors: [1.0, 1.0], resample_probability: 0}
"""
N_TRIALS = 6


def _read(folder: Path) -> dict[str, Any]:
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("iris-pbt")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("caviar.kind") == "sweep"]
    assert len(parents) == 1
    parent = parents[0]
    children = {
        int(r.data.tags["caviar.trial_index"]): r
        for r in runs
        if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    }
    histories = {
        index: {
            key: {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
            for key in ("val_accuracy", "val_loss", "hp.learning_rate", "hp.momentum")
        }
        for index, run in children.items()
    }
    decisions = sorted((folder / "caviar_runs" / "iris-pbt").glob("*/pbt/decisions/*.json"))
    return {
        "client": client,
        "parent": parent,
        "children": children,
        "histories": histories,
        "decisions": {p.name: json.loads(p.read_text()) for p in decisions},
    }


@pytest.fixture(scope="module")
def pbt_sweep(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("pbt")
    (folder / "pbt.yaml").write_text(SPEC)
    result = run_caviar("run", "pbt.yaml", cwd=folder)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {"folder": folder, "stdout": result.stdout, **_read(folder)}


def _exploits(sweep: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for name in sorted(sweep["decisions"]) for e in sweep["decisions"][name]["exploits"]]


def test_every_generation_copies_the_bottom_quantile(pbt_sweep: dict[str, Any]) -> None:
    assert sorted(pbt_sweep["decisions"]) == ["epoch-2.json", "epoch-4.json"]
    for decision in pbt_sweep["decisions"].values():
        scores = {int(i): s for i, s in decision["scores"].items()}
        assert sorted(scores) == list(range(N_TRIALS))
        order = sorted(scores, key=lambda i: (-scores[i], i))
        # ceil(6 x 0.25) = 2 copy and 2 are copied
        assert sorted(e["trial"] for e in decision["exploits"]) == sorted(order[-2:])
        assert {e["from_trial"] for e in decision["exploits"]} <= set(order[:2])
    assert len(pbt_sweep["children"]) == N_TRIALS
    assert "pbt:             4 copies in 2 generations" in pbt_sweep["stdout"]
    assert "best's schedule:" in pbt_sweep["stdout"]


def test_a_copy_trains_on_exactly_as_its_donor(pbt_sweep: dict[str, Any]) -> None:
    histories = pbt_sweep["histories"]
    for exploit in _exploits(pbt_sweep):
        epoch, trial, donor = exploit["epoch"], exploit["trial"], exploit["from_trial"]
        mine, theirs = histories[trial], histories[donor]
        after = range(epoch + 1, epoch + 3)  # to the next generation
        for key in ("val_accuracy", "hp.learning_rate", "hp.momentum"):
            assert [mine[key][e] for e in after] == [theirs[key][e] for e in after], key
        # a fused pack reports its members' losses from one batched evaluation, summed in
        # another order than a lone trial's (the weights are equal to the bit: test_pack.py)
        assert [mine["val_loss"][e] for e in after] == pytest.approx(
            [theirs["val_loss"][e] for e in after], rel=1e-6
        )
        # before the copy it trained with its own values
        assert mine["hp.learning_rate"][epoch] == pytest.approx(exploit["before"]["learning_rate"])
        assert mine["hp.learning_rate"][epoch + 1] == pytest.approx(
            exploit["after"]["learning_rate"]
        )


def test_the_lineage_is_on_the_parent_and_each_copy_on_its_child(
    pbt_sweep: dict[str, Any],
) -> None:
    client: MlflowClient = pbt_sweep["client"]
    parent = pbt_sweep["parent"]
    path = client.download_artifacts(
        parent.info.run_id, "pbt/lineage.json", str(pbt_sweep["folder"] / "dl")
    )
    lineage = json.loads(Path(path).read_text())
    assert lineage == _exploits(pbt_sweep)
    assert set(lineage[0]) == {"epoch", "trial", "from_trial", "before", "after"}
    for exploit in lineage:
        tag = pbt_sweep["children"][exploit["trial"]].data.tags["caviar.pbt.copies"]
        assert f"{exploit['epoch']}<-{exploit['from_trial']}" in tag
    copied = {e["trial"] for e in lineage}
    for index, child in pbt_sweep["children"].items():
        assert ("caviar.pbt.copies" in child.data.tags) == (index in copied)
        assert child.info.status == "FINISHED"
    assert parent.data.params["scheduler.kind"] == "pbt"
    assert "test_accuracy" in parent.data.metrics
    # the report draws the population's tree and the best line's schedule; no importance is
    # claimed from starting values that copies replaced
    drawn = {Path(a.path).name for a in client.list_artifacts(parent.info.run_id, "report")}
    assert "pbt_lineage.png" in drawn, drawn
    assert "objective_vs_parameters.png" not in drawn  # starting values explain nothing here
    assert "importance:" not in pbt_sweep["stdout"]


def test_packed_it_decides_and_trains_as_unpacked(
    pbt_sweep: dict[str, Any], tmp_path: Path
) -> None:
    """The population of one shape runs in fused packs (pack_size auto): copies inside a pack
    (no file read), from another pack and into a lone trial. The same population with
    pack_size 1 must make the same decisions from the same scores and train the same curves:
    a fused member's weights are a lone trial's to the bit (test_pack.py)."""
    assert "fused packs:" in pbt_sweep["stdout"]
    (tmp_path / "pbt.yaml").write_text(SPEC + "resources: {pack_size: 1}\n")
    result = run_caviar("run", "pbt.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "fused packs:" not in result.stdout
    unpacked = _read(tmp_path)
    assert unpacked["decisions"] == pbt_sweep["decisions"]
    packs = {
        index: child.data.tags.get("caviar.pack") for index, child in pbt_sweep["children"].items()
    }
    copies = [(e["trial"], e["from_trial"]) for e in _exploits(pbt_sweep)]
    assert any(packs[t] is not None and packs[t] == packs[d] for t, d in copies), (packs, copies)
    assert any(packs[t] != packs[d] for t, d in copies), (packs, copies)
    for index in range(N_TRIALS):
        mine, theirs = pbt_sweep["histories"][index], unpacked["histories"][index]
        for key in ("val_accuracy", "hp.learning_rate", "hp.momentum"):
            assert mine[key] == theirs[key], (index, key)
        assert list(mine["val_loss"].values()) == pytest.approx(
            list(theirs["val_loss"].values()), rel=1e-6
        )


def test_killed_at_a_generation_it_resumes_to_the_same_decisions_and_results(
    pbt_sweep: dict[str, Any], tmp_path: Path
) -> None:
    (tmp_path / "pbt.yaml").write_text(SPEC)
    log = tmp_path / "first.log"
    process = subprocess.Popen(
        [CAVIAR, "run", "pbt.yaml"],
        cwd=tmp_path,
        env=clean_env(),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    first = tmp_path / "caviar_runs" / "iris-pbt"
    deadline = time.monotonic() + 300
    try:
        while not list(first.glob("*/pbt/decisions/epoch-2.json")):
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no generation decided in 300 s"
            time.sleep(0.02)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert not list(first.glob("*/pbt/decisions/epoch-4.json"))  # killed mid-sweep
    resumed = run_caviar("run", "pbt.yaml", "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    again = _read(tmp_path)
    assert again["decisions"] == pbt_sweep["decisions"]
    for index in range(N_TRIALS):
        for key in ("val_accuracy", "hp.learning_rate"):
            assert again["histories"][index][key] == pbt_sweep["histories"][index][key]
    assert again["parent"].info.status == "FINISHED"


def test_the_best_trials_schedule_replays_as_one_panda_model(pbt_sweep: dict[str, Any]) -> None:
    parent = pbt_sweep["parent"]
    best_index = int(parent.data.tags["caviar.best_trial_index"])
    target = pbt_sweep["histories"][best_index]["val_accuracy"][6]
    result = run_caviar("panda", "--replay", parent.info.run_id, cwd=pbt_sweep["folder"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    line = next(x for x in result.stdout.splitlines() if x.strip().startswith("replay:"))
    assert f"trial #{best_index}'s {target:.4f}" in line
    replayed = float(line.split("final val_accuracy ")[1].split()[0])
    assert abs(replayed - target) <= 0.01  # the goal; bit-exact training gives 0
    client: MlflowClient = pbt_sweep["client"]
    runs = client.search_runs([parent.info.experiment_id], "tags.`caviar.kind` = 'panda'")
    assert [r.data.tags["caviar.panda.replay_of"] for r in runs] == [
        parent.data.tags["caviar.best_run_id"]
    ]
