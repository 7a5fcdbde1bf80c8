"""The package surface: exports and import hygiene."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import trainables

PACKAGE_DIR = Path(trainables.__file__).parent
ALLOWED_TOP_LEVEL = {
    "__future__",
    "trainables",
    "torch",
    "numpy",
    "sklearn",
    "pydantic",
    "pandas",  # CSV/Parquet, imported lazily; it always comes with mlflow
}
FORBIDDEN = {"orchestrator", "ray", "mlflow"}


def _imported_top_level_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_all_names_are_exported() -> None:
    for name in trainables.__all__:
        assert hasattr(trainables, name), name
    assert len(trainables.__all__) == len(set(trainables.__all__))


def test_imports_only_allowed_libraries() -> None:
    """trainables must run on a worker without the orchestrator, Ray or MLflow."""
    sources = sorted(PACKAGE_DIR.glob("*.py"))
    assert sources
    for path in sources:
        imported = _imported_top_level_modules(path)
        assert not imported & FORBIDDEN, (path.name, imported & FORBIDDEN)
        third_party = imported - set(sys.stdlib_module_names)
        assert third_party <= ALLOWED_TOP_LEVEL, (path.name, third_party - ALLOWED_TOP_LEVEL)


def test_a_trial_worker_does_not_import_scikit_learn() -> None:
    """Workers only train; scikit-learn (data loading and splitting, on the driver) would add
    most of a second to every actor start. The check does what a worker does with the arrays
    the driver sends: tensors, a session from the registry, epochs, a checkpoint."""
    import subprocess

    code = (
        "import sys, torch, trainables\n"
        "from trainables import TensorSplits, get_trainable\n"
        "g = torch.Generator().manual_seed(0)\n"
        "x, y = torch.randn(40, 4, generator=g), torch.arange(40) % 3\n"
        "data = TensorSplits(x, y, x[:10], y[:10], x[10:20], y[10:20], 4, 3)\n"
        "session = get_trainable('bn_softmax_mlp').make_session(\n"
        "    {'epochs': 2, 'batch_size': 8, 'hidden_units': 8}, data, 'cpu')\n"
        "session.step(); session.step(); session.state_dict()\n"
        "print(session.finished, 'sklearn' in sys.modules, 'pandas' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False", "False"]


def test_checking_a_spec_does_not_import_torch() -> None:
    """``caviar run`` validates the spec, then starts Ray on a thread, then pays the heavy
    imports: torch in the spec check would hold Ray's start back by a second."""
    import subprocess

    spec = Path(__file__).resolve().parents[2] / "examples" / "digits.yaml"
    code = (
        "import sys\n"
        "from orchestrator.spec import load_spec\n"
        "from orchestrator.spec.data import check_data_files\n"
        f"spec = load_spec({str(spec)!r})\n"
        "check_data_files(spec.data, None)\n"
        "assert spec.trainable == 'bn_softmax_mlp'\n"
        "print('torch' in sys.modules)\n"
        "import trainables\n"
        "print(trainables.TrainingSession.__module__, 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "trainables.train", "True"]
