"""``caviar schema --trainable`` from anywhere: ``--spec`` names the spec (or its folder) whose
folder holds the trainable's module, and an error never mentions a spec it was not given."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import run_caviar

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "own_model"
PARAMETERS = {"epochs", "learning_rate", "momentum", "channels", "batch_size", "seed"}


def test_a_spec_names_its_own_trainable_from_any_folder(tmp_path: Path) -> None:
    out = run_caviar("schema", "--spec", str(EXAMPLE / "spec.yaml"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    schema = json.loads(out.stdout)
    assert schema["title"] == "models:DIGITS_CNN parameters"
    assert set(schema["properties"]) == PARAMETERS


def test_a_folder_is_where_the_named_trainable_is_looked_up(tmp_path: Path) -> None:
    out = run_caviar(
        "schema", "--trainable", "models:DIGITS_CNN", "--spec", str(EXAMPLE), cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert set(json.loads(out.stdout)["properties"]) == PARAMETERS


def test_without_a_spec_the_error_says_how_to_name_one(tmp_path: Path) -> None:
    out = run_caviar("schema", "--trainable", "models:DIGITS_CNN", cwd=tmp_path)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "beside the spec" not in out.stderr  # it was given no spec
    assert (
        f"no module 'models' in {tmp_path.resolve()} or sys.path; run caviar schema in the "
        "module's folder, name that folder or its spec with --spec PATH, or install its package"
    ) in out.stderr, out.stderr


def test_a_spec_that_is_not_there_is_one_line(tmp_path: Path) -> None:
    out = run_caviar("schema", "--spec", "nope/spec.yaml", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "caviar: error: 1 problem:",
        "  - --spec: nope/spec.yaml does not exist; pass a spec file or the folder of the "
        "trainable's module",
    ], out.stderr


def test_a_folder_alone_needs_the_trainables_name(tmp_path: Path) -> None:
    out = run_caviar("schema", "--spec", str(EXAMPLE), cwd=tmp_path)
    assert out.returncode == 2
    assert (
        f"--spec: {EXAMPLE} is a folder: say which trainable in it with --trainable" in out.stderr
    )
