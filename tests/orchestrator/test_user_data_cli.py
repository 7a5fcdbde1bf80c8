"""`caviar validate` / `caviar run` on a user's data: exit 2, one message, nothing left running.

Each case costs a `caviar` process, so `run` is tried on one problem of each stage (the file,
the loader, the splitter); every other bad-data case is tested on the loaders directly.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run_caviar
from user_data_files import fruit_table, write_csv

EXAMPLES = Path(__file__).parents[2] / "examples"

SPEC = """
name: mine
data: {source: csv, path: data/mine.csv, label: fruit}
space: {learning_rate: {values: [0.1]}}
fixed: {epochs: 2}
"""


def _project(tmp_path: Path) -> Path:
    """A spec in its own folder, run from a different working directory."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "sweep.yaml").write_text(SPEC)
    (tmp_path / "cwd").mkdir()
    return folder


def _assert_clean_failure(tmp_path: Path, stderr: str) -> None:
    assert "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) <= 3, stderr
    for where in (tmp_path / "cwd", tmp_path / "project"):
        assert not (where / "caviar_runs").exists()  # no Ray run started
        assert not (where / "mlflow.db").exists()  # no tracking store touched


def test_validate_the_readme_example_from_anywhere(tmp_path: Path) -> None:
    result = run_caviar("validate", str(EXAMPLES / "csv.yaml"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK fruit-csv")


def test_validate_reports_a_missing_data_file(tmp_path: Path) -> None:
    folder = _project(tmp_path)
    result = run_caviar("validate", str(folder / "sweep.yaml"), cwd=tmp_path / "cwd")
    assert result.returncode == 2
    assert f"{folder / 'data' / 'mine.csv'} does not exist" in result.stderr
    assert "spec's folder" in result.stderr and "travel with the job" in result.stderr
    _assert_clean_failure(tmp_path, result.stderr)


def test_validate_finds_data_relative_to_the_spec(tmp_path: Path) -> None:
    folder = _project(tmp_path)
    write_csv(folder / "data" / "mine.csv", fruit_table())
    result = run_caviar("validate", str(folder / "sweep.yaml"), cwd=tmp_path / "cwd")
    assert result.returncode == 0, result.stderr


def test_validate_reports_a_missing_image_copy(tmp_path: Path) -> None:
    spec = tmp_path / "mnist.yaml"
    spec.write_text(
        "name: m\ndata: {source: torchvision, dataset: mnist, root: downloads}\n"
        "space: {learning_rate: {values: [0.1]}}\n"
    )
    result = run_caviar("validate", str(spec), cwd=tmp_path)
    assert result.returncode == 2
    assert f"in {tmp_path / 'downloads' / 'MNIST' / 'raw'}" in result.stderr
    assert "train-images-idx3-ubyte" in result.stderr and "Traceback" not in result.stderr


def _missing_label(frame):  # type: ignore[no-untyped-def]
    return frame.rename(columns={"fruit": "kind"})


def _one_class(frame):  # type: ignore[no-untyped-def]
    return frame.assign(fruit="apple")


def _processes_naming(folder: Path) -> list[int]:
    """Processes whose command line names ``folder`` (a Ray started under it: its raylet, GCS
    and workers name their session folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if str(folder).encode() in cmdline:
                found.append(int(entry.name))
    return found


@pytest.fixture
def ray_root() -> Iterator[Path]:
    """RAY_TMPDIR for the run: any Ray it starts puts its session folder under ``ray/`` here.
    Short, as Ray's socket paths must be; whatever still names it at the end is killed."""
    folder = Path(tempfile.mkdtemp(prefix="cv-", dir="/tmp"))
    try:
        yield folder
    finally:
        for pid in _processes_naming(folder):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize(
    ("spoil", "fragment", "checked_before_ray"),
    [
        (None, "does not exist", True),
        (_missing_label, "has no column 'fruit' for data.label", False),
        (_one_class, "need at least 2 classes", False),
    ],
    ids=["missing-file", "missing-label", "one-class"],
)
def test_run_with_bad_data_fails_before_training_and_leaves_no_ray_running(  # type: ignore[no-untyped-def]
    tmp_path: Path, ray_root: Path, spoil, fragment: str, checked_before_ray: bool
) -> None:
    """A missing file is found before Ray starts. The contents are read while Ray starts in
    the background (docs/design.md: Ray's start overlaps the data load), so a bad table stops
    the run before any trial, store or sweep folder, and the Ray begun for it is shut down."""
    folder = _project(tmp_path)
    if spoil is not None:
        write_csv(folder / "data" / "mine.csv", spoil(fruit_table()))
    result = run_caviar(
        "run",
        str(folder / "sweep.yaml"),
        cwd=tmp_path / "cwd",
        timeout=120,
        RAY_TMPDIR=str(ray_root),
    )
    assert result.returncode == 2, result.stderr
    assert fragment in result.stderr
    assert str(folder / "data" / "mine.csv") in result.stderr  # names the file
    _assert_clean_failure(tmp_path, result.stderr)
    if checked_before_ray:
        assert not (ray_root / "ray").exists()  # no Ray session was ever started
    deadline = time.monotonic() + 15  # a raylet's workers exit as it goes, not at once
    while _processes_naming(ray_root) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _processes_naming(ray_root) == []
