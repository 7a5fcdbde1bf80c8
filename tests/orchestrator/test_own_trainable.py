"""A trainable from the user's own code: named by import path or entry point, checked by
``caviar validate`` with one clear line per way it can be wrong (exit 2)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import run_caviar

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "own_model"


def _example(tmp_path: Path) -> Path:
    folder = tmp_path / "own"
    shutil.copytree(EXAMPLE, folder)
    return folder


def _spec_with(folder: Path, trainable: str) -> Path:
    text = (folder / "spec.yaml").read_text()
    spec = folder / "spec.yaml"
    spec.write_text(text.replace("trainable: models:DIGITS_CNN", f"trainable: '{trainable}'"))
    return spec


def test_the_example_validates_from_any_working_directory(tmp_path: Path) -> None:
    out = run_caviar("validate", str(EXAMPLE / "spec.yaml"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("OK own-cnn-digits: 3 parameters")
    assert "objective max val_accuracy" in out.stdout


@pytest.mark.parametrize(
    ("trainable", "files", "message"),
    [
        (
            "models:DIGITS_CN",
            {},
            "trainable: trainable 'models:DIGITS_CN': module 'models' has no 'DIGITS_CN'; "
            "it defines the trainables DIGITS_CNN",
        ),
        ("nowhere:THING", {}, "trainable: trainable 'nowhere:THING': no module 'nowhere' in "),
        (
            "broken:THING",
            {"broken.py": "import math\nVALUE = 1 / 0\n"},
            "trainable: trainable 'broken:THING': importing 'broken' failed: "
            "ZeroDivisionError: division by zero",
        ),
        (
            "needs:THING",
            {"needs.py": "import not_installed_anywhere\n"},
            "trainable: trainable 'needs:THING': importing 'needs' failed: "
            "ModuleNotFoundError: No module named 'not_installed_anywhere'",
        ),
        (
            "plain:THING",
            {"plain.py": "THING = {'a': 1}\n"},
            "trainable: trainable 'plain:THING' is a dict, not a TrainableDefinition",
        ),
        ("models:", {}, "trainable: trainable 'models:' is not an import path"),
        ("no_such_trainable", {}, "trainable: unknown trainable 'no_such_trainable'; registered:"),
    ],
)
def test_each_bad_trainable_is_one_line_and_exit_2(
    tmp_path: Path, trainable: str, files: dict[str, str], message: str
) -> None:
    folder = _example(tmp_path)
    for name, text in files.items():
        (folder / name).write_text(text)
    spec = _spec_with(folder, trainable)
    out = run_caviar("validate", str(spec), cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert lines[0] == f"caviar: error: 1 problem in {spec}:"
    assert len(lines) == 2 and lines[1].startswith(f"  - {message}"), out.stderr


def test_an_objective_the_trainable_does_not_report_is_refused(tmp_path: Path) -> None:
    folder = _example(tmp_path)
    spec = folder / "spec.yaml"
    spec.write_text(
        spec.read_text().replace("objective: {metric: val_accuracy}", "objective: {metric: f1}")
    )
    out = run_caviar("validate", str(spec), cwd=tmp_path)
    assert out.returncode == 2
    assert "objective.metric: models:DIGITS_CNN does not report 'f1'" in out.stderr


def test_a_parameter_the_config_model_lacks_is_refused(tmp_path: Path) -> None:
    folder = _example(tmp_path)
    spec = folder / "spec.yaml"
    spec.write_text(
        spec.read_text().replace("fixed: {epochs: 6,", "fixed: {epochs: 6, dropout: 0.1,")
    )
    out = run_caviar("validate", str(spec), cwd=tmp_path)
    assert out.returncode == 2
    assert "fixed.dropout: models:DIGITS_CNN has no parameter 'dropout'" in out.stderr
    assert "batch_size, channels, epochs, learning_rate, momentum, seed" in out.stderr


def test_schema_prints_a_named_trainables_parameters_and_metrics() -> None:
    out = run_caviar("schema", "--trainable", "models:DIGITS_CNN", cwd=EXAMPLE)
    assert out.returncode == 0, out.stderr
    schema = json.loads(out.stdout)
    assert schema["title"] == "models:DIGITS_CNN parameters"
    assert set(schema["properties"]) == {
        "epochs", "learning_rate", "momentum", "channels", "batch_size", "seed"
    }  # fmt: skip
    assert schema["x-caviar-metrics"]["val_loss"] == "min"
    bad = run_caviar("schema", "--trainable", "models:NOPE", cwd=EXAMPLE)
    assert bad.returncode == 2 and "has no 'NOPE'" in bad.stderr


def test_an_installed_packages_entry_point_names_a_trainable(tmp_path: Path) -> None:
    """A package on sys.path with a ``caviar.trainables`` entry point (as pip installs one)."""
    site = tmp_path / "site"
    package = site / "my_models"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text((EXAMPLE / "models.py").read_text())
    dist = site / "my_models-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-models\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[caviar.trainables]\nmy_cnn = my_models:DIGITS_CNN\n")
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    spec = folder / "spec.yaml"
    spec.write_text((EXAMPLE / "spec.yaml").read_text().replace("models:DIGITS_CNN", "my_cnn"))
    out = run_caviar("validate", str(spec), cwd=tmp_path, PYTHONPATH=path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("OK own-cnn-digits")
    (dist / "entry_points.txt").write_text("[caviar.trainables]\nmy_cnn = my_models:MISSING\n")
    out = run_caviar("validate", str(spec), cwd=tmp_path, PYTHONPATH=path)
    assert out.returncode == 2
    assert "the entry point 'my_models:MISSING' of 'caviar.trainables' failed to load" in out.stderr
