"""SIGTERM (`caviar stop JOB`, `ray job stop`, `kill PID`, a scheduler's kill) while a sweep or
a panda session trains reads as the interruption it is: caviar's own lines, exit 130, and not
Ray's crash dump (``*** SIGTERM received at time=... PC: @ 0x...``, printed by the failure
signal handler Ray's core worker installs in the driver and in every worker)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import CAVIAR, clean_env
from mlflow_db import query

pytestmark = pytest.mark.integration

# Trials that train for minutes: the signal always lands while they train.
SPEC = """
name: {name}
data: {{source: digits, seed: 0}}
space:
  learning_rate: {{scale: log, low: 1.0e-3, high: 1.0}}
fixed: {{optimizer: sgd, batch_size: 32, hidden_units: 16, layers: 1}}
search: {{num_trials: 2, seed: 0}}
scheduler: {{kind: fifo, max_epochs: 3000}}
"""
CRASH_DUMP = ("SIGTERM received", "PC: @", "logging.cc", "Traceback")


def _sigterm_while_training(folder: Path, args: list[str]) -> tuple[int, str]:
    """Start caviar, SIGTERM it (the process alone, as `kill PID` does) once a metric is in
    MLflow; returns its exit status and everything it printed."""
    log = folder / "out.txt"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [CAVIAR, *args],
            cwd=folder,
            env=clean_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 240
        while not query(folder / "mlflow.db", "SELECT 1 FROM metrics LIMIT 1"):
            assert process.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, "nothing trained in 240 s"
            time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return code, log.read_text(errors="replace")


def test_sigterm_interrupts_a_sweep_without_rays_crash_dump(tmp_path: Path) -> None:
    (tmp_path / "spec.yaml").write_text(SPEC.format(name="sigterm-sweep"))
    code, out = _sigterm_while_training(tmp_path, ["run", "spec.yaml"])
    assert code == 130, out
    assert "caviar: interrupted: stopping the trials" in out
    assert "caviar: finish it with:  caviar run spec.yaml --resume" in out
    assert not [sign for sign in CRASH_DUMP if sign in out], out


def test_sigterm_interrupts_a_panda_session_without_rays_crash_dump(tmp_path: Path) -> None:
    (tmp_path / "spec.yaml").write_text(SPEC.format(name="sigterm-panda"))
    code, out = _sigterm_while_training(tmp_path, ["panda", "spec.yaml"])
    assert code == 130, out
    assert "caviar: continue it with:  caviar panda spec.yaml --resume" in out
    assert not [sign for sign in CRASH_DUMP if sign in out], out
