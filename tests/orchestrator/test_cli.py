"""The command line as a user meets it: exit codes, one-screen errors, no tracebacks."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from conftest import run_caviar

EXAMPLES = Path(__file__).parents[2] / "examples"


def test_validate_good_spec_prints_one_line_summary(tmp_path: Path) -> None:
    result = run_caviar("validate", str(EXAMPLES / "digits.yaml"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    assert "64 trials" in lines[0] and "random" in lines[0] and "learning_rate log" in lines[0]


def test_validate_bad_spec_exits_2_listing_problems_without_traceback(tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(
        "name: bad\n"
        "space:\n"
        "  learning_rate: {scale: log, low: 0, high: 1}\n"
        "  momentum: {scale: log1m, low: 0.9, high: 1.5}\n"
        "search: {num_trails: 3}\n"
    )
    result = run_caviar("validate", str(spec), cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "space.learning_rate.low: must be > 0 on a log scale, got 0" in result.stderr
    assert "space.momentum.high" in result.stderr
    assert "search.num_trails" in result.stderr
    assert len(result.stderr.splitlines()) < 25


def test_run_with_a_bad_spec_fails_before_any_compute(tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: bad\nspace: {}\n")
    # Any Ray this run started would leave its session folder under RAY_TMPDIR/ray.
    ray_root = Path(tempfile.mkdtemp(prefix="cv-", dir="/tmp"))  # short, as Ray's sockets need
    try:
        result = run_caviar("run", str(spec), cwd=tmp_path, RAY_TMPDIR=str(ray_root))
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
        assert not (tmp_path / "mlflow.db").exists()
        assert not (tmp_path / "caviar_runs").exists()
        assert not (ray_root / "ray").exists()  # Ray never started
    finally:
        shutil.rmtree(ray_root, ignore_errors=True)


def test_missing_spec_file(tmp_path: Path) -> None:
    result = run_caviar("validate", "nope.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_schema_prints_json_schema(tmp_path: Path) -> None:
    result = run_caviar("schema", cwd=tmp_path)
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert schema["title"] == "caviar sweep spec"
    assert "space" in schema["required"]


def test_unreachable_tracking_server_is_a_clear_error(tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(
        "name: s\nspace: {learning_rate: {values: [0.1]}}\ntracking: {uri: 'http://127.0.0.1:9'}\n"
    )
    result = run_caviar("run", str(spec), cwd=tmp_path, timeout=120)
    assert result.returncode == 1
    assert "cannot reach the MLflow tracking server at http://127.0.0.1:9" in result.stderr
    assert "Traceback" not in result.stderr
