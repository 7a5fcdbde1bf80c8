"""`caviar validate` / `caviar run` on a user's data: exit 2, one message, nothing started.

Each case costs a `caviar` process, so `run` is tried on one problem of each stage (the file,
the loader, the splitter); every other bad-data case is tested on the loaders directly.
"""

from __future__ import annotations

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


@pytest.mark.parametrize(
    ("spoil", "fragment"),
    [
        (None, "does not exist"),
        (_missing_label, "has no column 'fruit' for data.label"),
        (_one_class, "need at least 2 classes"),
    ],
    ids=["missing-file", "missing-label", "one-class"],
)
def test_run_with_bad_data_fails_before_ray_starts(tmp_path: Path, spoil, fragment: str) -> None:  # type: ignore[no-untyped-def]
    folder = _project(tmp_path)
    if spoil is not None:
        write_csv(folder / "data" / "mine.csv", spoil(fruit_table()))
    result = run_caviar("run", str(folder / "sweep.yaml"), cwd=tmp_path / "cwd", timeout=120)
    assert result.returncode == 2, result.stderr
    assert fragment in result.stderr
    assert str(folder / "data" / "mine.csv") in result.stderr  # names the file
    _assert_clean_failure(tmp_path, result.stderr)
