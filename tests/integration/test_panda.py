"""`caviar panda` as a user runs it: a session on its own Ray, paused, adjusted, rewound,
resumed and stopped from another "shell" (this test process, through `caviar`'s own main), a
rule firing, and the MLflow tree read back; then a session killed with SIGKILL and resumed."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import CAVIAR, clean_env
from mlflow import MlflowClient

from orchestrator.cli import main

pytestmark = pytest.mark.integration

SPEC = """
name: digits-panda
data: {source: digits, seed: 0}
space:
  learning_rate: {scale: log, low: 1.0e-3, high: 1.0}
  momentum: {scale: log1m, low: 0.8, high: 0.99}
  layers: {values: [1, 2, 3]}
fixed: {batch_size: 8, hidden_units: 32, epochs: 400}
panda:
  keep: 4
  keep_for: 0
  rules:
    plateau: {patience: 6, factor: 0.5, min_delta: 1.0}
"""


@pytest.fixture
def ray_tmp():
    """A short folder for Ray's sockets (a Unix socket path has at most 107 bytes)."""
    folder = tempfile.mkdtemp(prefix="cv-pd-", dir="/tmp")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _start(folder: Path, ray_tmp: str, *args: str) -> tuple[subprocess.Popen, Path]:
    log = folder / f"panda-{len(list(folder.glob('panda-*.log')))}.log"
    process = subprocess.Popen(
        [CAVIAR, "panda", "spec.yaml", *args],
        cwd=folder,
        env=clean_env(RAY_TMPDIR=ray_tmp),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return process, log


def _wait(condition, what: str, timeout: float = 120.0, process=None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"caviar panda exited ({process.returncode}) before {what}")
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _journal(folder: Path) -> list[dict[str, Any]]:
    events = []
    for path in folder.glob("caviar_runs/digits-panda/panda/*/journal.jsonl"):
        for line in path.read_text().splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                pass
    return events


def _epoch(folder: Path) -> int:
    return max((int(e["r"]["epoch"]) for e in _journal(folder) if e["e"] == "result"), default=0)


def _trained(folder: Path) -> int:
    """Epochs trained in all (every branch)."""
    return sum(1 for e in _journal(folder) if e["e"] == "result")


def _run_id(log: Path) -> str | None:
    found = re.search(r"MLflow run ([0-9a-f]{32})", log.read_text())
    return found.group(1) if found else None


def _caviar(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_a_session_adjusted_rewound_ruled_and_stopped_is_a_tree_in_mlflow(
    tmp_path: Path, capsys, monkeypatch, ray_tmp: str
) -> None:
    (tmp_path / "spec.yaml").write_text(SPEC)
    monkeypatch.chdir(tmp_path)
    process, log = _start(tmp_path, ray_tmp)
    try:
        run_id = _wait(lambda: _run_id(log), "the session's run id", process=process)
        _wait(lambda: _epoch(tmp_path) >= 2, "two epochs")

        code, out, _ = _caviar(capsys, "panda", "adjust", run_id, "lr=0.05", "momentum=0.8")
        assert code == 0 and "applied: segment" in out
        adjusted = int(re.search(r"segment (\d+)", out).group(1))

        # user mistakes: one line each, exit 2, nothing sent
        for args, message in [
            (("adjust", run_id, "layers=3"), "cannot change layers mid-training: it changes"),
            (("adjust", run_id, "lerning_rate=0.1"), "no parameter 'lerning_rate'; did you mean"),
            (("adjust", "0" * 32, "lr=0.1"), "no panda session with MLflow run id"),
            (("adjust", run_id, "--rewind-to", "1"), "checkpoint is no longer kept"),
        ]:
            _wait(lambda: _epoch(tmp_path) >= 8, "epoch 8")  # epoch 1 has left `keep`
            code, _, err = _caviar(capsys, "panda", *args)
            assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err

        # The checked checkpoint is pinned until the session answers; only the moments between
        # reading the journal here and the check can outrun `keep` on a loaded machine, and
        # that refusal happens before anything is sent, so asking again is what a user would do.
        for _attempt in range(3):
            target = _epoch(tmp_path) - 1
            code, out, err = _caviar(
                capsys, "panda", "adjust", run_id, "--rewind-to", str(target), "batch_size=16"
            )
            if "no longer kept" not in err:
                break
        assert code == 0 and f"trains from epoch {target}" in out, (code, out, err)
        rewound = int(re.search(r"segment (\d+)", out).group(1))

        # paused: the Ray worker trains nothing until resumed; an adjustment made meanwhile
        # is what trains on
        code, out, _ = _caviar(capsys, "panda", "pause", run_id)
        paused_at = int(re.search(r"paused at epoch (\d+);", out).group(1))
        assert code == 0 and f"caviar panda resume {run_id} to go on" in out, out
        trained = _trained(tmp_path)
        time.sleep(2.0)
        assert _trained(tmp_path) == trained
        code, out, _ = _caviar(capsys, "panda", "adjust", run_id, "momentum=0.85")
        assert code == 0 and f"trains from epoch {paused_at}" in out
        time.sleep(0.5)
        assert _trained(tmp_path) == trained
        code, out, _ = _caviar(capsys, "panda", "resume", run_id)
        assert code == 0 and out.strip() == f"caviar: resumed at epoch {paused_at}"

        _wait(
            lambda: any(e.get("by") == "rule:plateau" for e in _journal(tmp_path)),
            "the plateau rule",
        )
        code, out, _ = _caviar(capsys, "panda", "stop", run_id)
        assert code == 0 and "stopped at epoch" in out
        assert process.wait(timeout=120) == 0
    finally:
        _kill(process)
    text = log.read_text()
    assert "stopped by a person" in text and f"segment {rewound}: rewind to epoch" in text
    assert f"caviar: epoch {paused_at}: paused by user; caviar panda resume {run_id}" in text
    assert re.search(r"  paused: +once, [\d.]+ s in all \(at epoch \d+\)", text), text
    assert re.search(r"final model: +models:/\S+ \(mlflow.pytorch.load_model\)", text), text

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = client.get_run(run_id)
    assert parent.data.tags["caviar.mode"] == "panda" and parent.info.status == "FINISHED"
    (pause,) = json.loads(parent.data.tags["caviar.panda.pauses"])
    assert pause["epoch"] == paused_at and pause["by"] == "user" and pause["seconds"] >= 2.5
    assert parent.data.metrics["paused_seconds"] == pytest.approx(pause["seconds"])
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'"
    )
    segments = {int(c.data.tags["caviar.panda.segment"]): c for c in children}
    assert sorted(segments) == list(range(len(segments))) and len(segments) >= 4
    run_of = {i: c.info.run_id for i, c in segments.items()}
    for index, child in segments.items():
        tags, params = child.data.tags, child.data.params
        start = int(tags["caviar.panda.start_epoch"])
        steps = [int(m.step) for m in client.get_metric_history(child.info.run_id, "val_loss")]
        # contiguous steps on the session's epoch axis, from the epoch after its start
        assert steps == list(range(start + 1, start + 1 + len(steps))), (index, start, steps)
        assert int(tags["caviar.last_epoch"]) == start + len(steps)
        if index == 0:
            assert "caviar.panda.parent_segment" not in tags
            continue
        parent_index = int(tags["caviar.panda.parent_segment"])
        assert tags["caviar.panda.parent_run_id"] == run_of[parent_index]
        changes = json.loads(tags["caviar.panda.changes"])
        for name, value in changes.items():
            assert float(params[name]) == pytest.approx(float(value))
    rewind = segments[rewound]
    assert rewind.data.tags["caviar.panda.reason"] == "rewind"
    assert int(rewind.data.tags["caviar.panda.start_epoch"]) == target
    assert rewind.data.params["batch_size"] == "16" and rewind.data.params["momentum"] == "0.8"
    assert segments[adjusted].data.tags["caviar.panda.by"] == "user"
    assert any(c.data.tags["caviar.panda.by"] == "rule:plateau" for c in children)

    # the final model, logged on the session's run, loads and scores the test accuracy logged
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert parent.data.metrics["test_accuracy"] > 0.5
    accuracy = _logged_model_accuracy(parent.data.tags["caviar.model_uri"], store, tmp_path)
    assert accuracy == pytest.approx(parent.data.metrics["test_accuracy"], abs=1e-9)

    # the branches chart, read back from MLflow alone
    # The store named explicitly: an earlier test in this process may have set
    # MLFLOW_TRACKING_URI (mlflow.set_tracking_uri exports it), which the default would follow.
    code, out, err = _caviar(
        capsys, "report", run_id, "--tracking-uri", store, "--out", str(tmp_path / "report")
    )
    assert code == 0, err
    assert (tmp_path / "report" / "panda_branches.png").stat().st_size > 10_000


def _logged_model_accuracy(uri: str, store: str, folder: Path) -> float:
    import mlflow
    import mlflow.pytorch
    import numpy as np
    import torch

    from orchestrator.spec import load_spec
    from orchestrator.spec.data import load_data

    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(store)
    try:
        model = mlflow.pytorch.load_model(uri, map_location="cpu")
    finally:
        mlflow.set_tracking_uri(before)  # later tests in this process must not follow it
    data = load_data(load_spec(folder / "spec.yaml").data, folder)
    with torch.no_grad():
        predictions = model(torch.as_tensor(data.x_test)).argmax(dim=1).numpy()
    return float(np.mean(predictions == data.y_test))


def test_a_killed_session_resumes_like_a_sweep(tmp_path: Path, monkeypatch, ray_tmp: str) -> None:
    (tmp_path / "spec.yaml").write_text(SPEC.replace("epochs: 400", "epochs: 16"))
    monkeypatch.chdir(tmp_path)
    process, log = _start(tmp_path, ray_tmp)
    try:
        run_id = _wait(lambda: _run_id(log), "the session's run id", process=process)
        _wait(lambda: _epoch(tmp_path) >= 6, "six epochs")
    finally:
        _kill(process)  # SIGKILL: no clean-up at all
    killed_at = _epoch(tmp_path)
    resumed = subprocess.run(
        [CAVIAR, "panda", "spec.yaml", "--resume"],
        cwd=tmp_path,
        env=clean_env(RAY_TMPDIR=ray_tmp),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming digits-panda" in resumed.stdout and run_id in resumed.stdout
    assert "ran its epoch budget" in resumed.stdout
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = client.get_run(run_id)
    assert parent.info.status == "FINISHED"
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'"
    )
    assert len({c.data.tags["caviar.panda.segment"] for c in children}) == len(children)
    steps = sorted(
        int(m.step) for c in children for m in client.get_metric_history(c.info.run_id, "val_loss")
    )
    # every epoch once on the session's axis (the plateau rule may have split it)
    assert steps == list(range(1, 17)) and killed_at >= 6
    assert all(c.info.status == "FINISHED" for c in children)
