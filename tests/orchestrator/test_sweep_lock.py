"""One driver per sweep (the lock), a resume refused by field, and the epoch watchdog: each
checked on real processes, since what they guard against is another process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.spec import parse_spec
from orchestrator.store.markers import ResumeError, SweepMarker, pick_for_resume, write_marker
from orchestrator.store.sweep_lock import LOCK, SweepRunning, sweep_lock

REPO = Path(__file__).resolve().parents[2]

HOLD = """
import sys, time
from pathlib import Path
from orchestrator.store.sweep_lock import sweep_lock
with sweep_lock(Path(sys.argv[1]), "s", "s.yaml"):
    print("held", flush=True)
    time.sleep(120)
"""


def _holder(folder: Path) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "held"
    return process


def test_a_held_lock_refuses_naming_its_holder_and_frees_when_the_holder_is_killed(
    tmp_path: Path,
) -> None:
    holder = _holder(tmp_path)
    try:
        with pytest.raises(SweepRunning) as refused:
            with sweep_lock(tmp_path, "s", "s.yaml"):
                pass
        message = str(refused.value)
        assert f"sweep s is running now (caviar, pid {holder.pid} on " in message
        assert "caviar run s.yaml --resume" in message
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # SIGKILL left the holder's file behind; the kernel dropped its lock with the process.
    assert (tmp_path / LOCK).exists()
    with sweep_lock(tmp_path, "s", "s.yaml"):
        assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()


def _spec(**overrides: object) -> object:
    data: dict[str, object] = {
        "name": "t",
        "space": {"learning_rate": {"scale": "log", "low": 1e-3, "high": 1.0}},
        "search": {"num_trials": 16},
    }
    data.update(overrides)
    return parse_spec(data)


def _started(tmp_path: Path, spec: object) -> None:
    write_marker(
        tmp_path / "20261207-000000-abcdef",
        SweepMarker(
            "20261207-000000-abcdef",
            "interrupted",
            "run",
            "sqlite:///x.db",
            "t",
            spec.spec_hash(),  # type: ignore[attr-defined]
            spec.results_fields(),  # type: ignore[attr-defined]
        ),
    )


def test_a_changed_spec_is_refused_naming_each_changed_field(tmp_path: Path) -> None:
    _started(tmp_path, _spec())
    changed = _spec(
        search={"num_trials": 32},
        space={"learning_rate": {"scale": "log", "low": 1e-4, "high": 1.0}},
    )
    with pytest.raises(ResumeError) as refused:
        pick_for_resume(tmp_path, changed.spec_hash(), changed.results_fields())
    message = str(refused.value)
    assert "search.num_trials: 16 -> 32" in message
    assert "space.learning_rate.low: 0.001 -> 0.0001" in message
    assert "hash" not in message


def test_fields_that_cannot_change_results_may_change_on_resume(tmp_path: Path) -> None:
    _started(tmp_path, _spec())
    note = _spec(
        description="now with a note",
        resources={"epoch_timeout_s": 60},
        storage={"report_every_s": 5, "checkpoint_every_s": 30, "max_failures": 0},
    )
    run_dir, marker = pick_for_resume(tmp_path, note.spec_hash(), note.results_fields())
    assert marker.sweep_id == "20261207-000000-abcdef"


WATCHED = """
import sys, time
from pathlib import Path
from orchestrator.engine.epoch_watchdog import EpochWatchdog
dog = EpochWatchdog(float(sys.argv[1]), Path(sys.argv[2]))
with dog.watching(2):
    pass  # a quick epoch: disarmed in time
with dog.watching(3):
    time.sleep(60)  # a hung one
"""


def test_the_watchdog_ends_a_hung_epoch_and_leaves_its_note(tmp_path: Path) -> None:
    note = tmp_path / "trial.json"
    started = time.monotonic()
    ended = subprocess.run(
        [sys.executable, "-c", WATCHED, "1.0", str(note)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ended.returncode == 124, ended.stderr
    assert time.monotonic() - started < 30
    assert json.loads(note.read_text()) == {"epoch": 3, "timeout_s": 1.0}
    assert "ran past resources.epoch_timeout_s (1 s)" in ended.stderr


def test_a_field_at_its_default_is_the_same_spec_as_one_that_leaves_it_out() -> None:
    """A later caviar that adds a field with a default still resumes an older one's sweeps."""
    assert _spec().spec_hash() == _spec(resources={"pack_size": "auto"}).spec_hash()
    assert _spec().spec_hash() != _spec(resources={"pack_size": 1}).spec_hash()
