"""One process, many specs: ``models:NAME`` resolves to the ``models.py`` of the spec's own
folder, as it is now (issue 23: ``caviar up``'s warm driver runs sweep after sweep and kept
the first folder's, or the unedited, module by its reference string)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from trainables import get_trainable

MODULE = """
from trainables.config import MlpConfig
from trainables.registry import TrainableDefinition
from trainables.train import TrainingSession

MODEL = TrainableDefinition(
    name={name!r},
    description="test double",
    config_model=MlpConfig,
    metrics={{{metric!r}: "max"}},
    make_session=TrainingSession,
)
"""


@pytest.fixture
def clean_imports(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The folders and modules a test adds leave with it."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.split(".")[0] in ("models", "userpkg"):
            del sys.modules[name]


def _write(folder: Path, metric: str, relative: str = "models.py") -> Path:
    path = folder / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(MODULE.format(name=f"{folder.name}-{metric}", metric=metric))
    return path


@pytest.mark.usefixtures("clean_imports")
def test_two_folders_with_a_models_py_each_resolve_to_their_own(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    _write(one, "metric_one")
    _write(two, "metric_two")
    assert set(get_trainable("models:MODEL", [one]).metrics) == {"metric_one"}
    assert set(get_trainable("models:MODEL", [two]).metrics) == {"metric_two"}
    # back to the first project: its folder wins again although the second's is on sys.path
    assert set(get_trainable("models:MODEL", [one]).metrics) == {"metric_one"}
    assert sys.modules["models"].__file__ == str((one / "models.py").resolve())


@pytest.mark.usefixtures("clean_imports")
def test_an_edited_models_py_is_imported_again_and_an_unchanged_one_is_not(
    tmp_path: Path,
) -> None:
    path = _write(tmp_path, "before")
    first = get_trainable("models:MODEL", [tmp_path])
    assert set(first.metrics) == {"before"}
    assert get_trainable("models:MODEL", [tmp_path]) is first  # unchanged: the same module
    assert get_trainable("models:MODEL") is first  # no folder named: what is imported
    path.write_text(MODULE.format(name="edited", metric="after_the_edit"))  # another size too
    edited = get_trainable("models:MODEL", [tmp_path])
    assert set(edited.metrics) == {"after_the_edit"} and edited.name == "edited"
    assert get_trainable("models:MODEL") is edited


@pytest.mark.usefixtures("clean_imports")
def test_a_package_module_of_the_same_name_in_two_folders(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    for folder in (one, two):
        (folder / "userpkg").mkdir(parents=True)
        (folder / "userpkg" / "__init__.py").write_text("")
    _write(one, "pkg_one", "userpkg/nets.py")
    _write(two, "pkg_two", "userpkg/nets.py")
    assert set(get_trainable("userpkg.nets:MODEL", [one]).metrics) == {"pkg_one"}
    assert set(get_trainable("userpkg.nets:MODEL", [two]).metrics) == {"pkg_two"}
    assert sys.modules["userpkg"].__file__ == str((two / "userpkg" / "__init__.py").resolve())
