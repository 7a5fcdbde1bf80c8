"""The spec's file data sources, path resolution, error conversion, and a small sweep on each.

The sweep here is the trial's own path without Ray: spec file -> ``load_data`` (as the driver
does) -> tensors -> the registered trainable's sessions, two configurations for two epochs.
The real ``caviar run`` on a CSV is in tests/integration/test_user_data_sweep.py.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from user_data_files import fake_cifar10, fake_mnist, fruit_table, write_csv, write_npz

from orchestrator.errors import SpecError
from orchestrator.spec import (
    CsvData,
    NpzData,
    ParquetData,
    TorchvisionData,
    load_spec,
    parse_spec,
)
from orchestrator.spec.data import (
    DataLoadError,
    check_data_files,
    class_names_param,
    load_data,
    resolve,
)
from trainables import TensorSplits, get_trainable

EXAMPLES = Path(__file__).parents[2] / "examples"


def _spec(data: dict[str, Any]) -> Any:
    return parse_spec({"name": "t", "space": {"learning_rate": {"values": [0.1]}}, "data": data})


def _problems(data: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(SpecError) as excinfo:
        _spec(data)
    return {p.path: p.message for p in excinfo.value.problems}


# --- the spec ----------------------------------------------------------------------------


def test_each_source_parses_to_its_model() -> None:
    assert isinstance(_spec({"source": "csv", "path": "a.csv", "label": "y"}).data, CsvData)
    assert isinstance(_spec({"source": "parquet", "path": "a", "label": "y"}).data, ParquetData)
    npz = _spec({"source": "npz", "path": "a.npz"}).data
    assert isinstance(npz, NpzData) and (npz.x_key, npz.y_key) == ("X", "y")
    images = _spec({"source": "torchvision", "dataset": "cifar10", "root": "d"}).data
    assert isinstance(images, TorchvisionData)


def test_table_sources_need_a_path_and_a_label() -> None:
    problems = _problems({"source": "csv"})
    assert problems["data.path"] == "is required" and problems["data.label"] == "is required"


@pytest.mark.parametrize(
    ("data", "path", "fragment"),
    [
        ({"source": "csv", "path": "a", "label": "y", "features": ["x", "y"]}, "data", "target"),
        ({"source": "csv", "path": "a", "label": "y", "features": ["x", "x"]}, "data", "twice"),
        ({"source": "csv", "path": "a", "label": "y", "classes": [1, "1"]}, "data.classes", "1"),
        ({"source": "csv", "path": "a", "label": "y", "delimiter": ";;"}, "data.delimiter", "1"),
        ({"source": "npz", "path": "a", "x_key": "y"}, "data", "name two arrays"),
        (
            {"source": "torchvision", "dataset": "mnist", "root": ".", "test_fraction": 0.1},
            "data",
            "own test set",
        ),
        ({"source": "torchvision", "dataset": "svhn", "root": "."}, "data.dataset", "mnist"),
        ({"source": "mnist"}, "data.source", "source: torchvision, dataset: mnist"),
        ({"source": "csv", "path": "a", "label": "y", "pth": "b"}, "data.pth", "'path'"),
    ],
)
def test_spec_problems(data: dict[str, Any], path: str, fragment: str) -> None:
    problems = _problems(data)
    assert fragment in problems[path], problems


# --- paths -------------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_spec_folder(tmp_path: Path) -> None:
    assert resolve("data/a.csv", tmp_path) == tmp_path / "data" / "a.csv"
    assert resolve(str(tmp_path / "abs.csv"), Path("/elsewhere")) == tmp_path / "abs.csv"
    assert resolve("~/a.csv", tmp_path) == Path.home() / "a.csv"


def test_a_missing_file_names_both_paths_and_the_cluster_rule(tmp_path: Path) -> None:
    data = _spec({"source": "csv", "path": "data/fruit.csv", "label": "fruit"}).data
    with pytest.raises(DataLoadError) as excinfo:
        load_data(data, tmp_path)
    message = str(excinfo.value)
    assert excinfo.value.exit_code == 2
    assert "data.path: 'data/fruit.csv':" in message
    assert f"{tmp_path / 'data' / 'fruit.csv'} does not exist" in message
    assert f"spec's folder ({tmp_path})" in message
    assert "travel with the job" in message and "absolute path must exist" in message


def test_a_missing_image_copy_is_reported_by_the_cheap_check(tmp_path: Path) -> None:
    data = _spec({"source": "torchvision", "dataset": "mnist", "root": "images"}).data
    with pytest.raises(DataLoadError, match=r"data.root: no local copy of MNIST .*images/MNIST"):
        check_data_files(data, tmp_path)


def test_loader_errors_name_the_file_and_source(tmp_path: Path) -> None:
    write_csv(tmp_path / "fruit.csv", fruit_table())
    data = _spec({"source": "csv", "path": "fruit.csv", "label": "kind"}).data
    with pytest.raises(DataLoadError) as excinfo:
        load_data(data, tmp_path)
    assert str(excinfo.value).startswith(f"data (csv): {tmp_path / 'fruit.csv'}: has no column")


def test_a_single_class_names_the_file(tmp_path: Path) -> None:
    write_csv(tmp_path / "one.csv", fruit_table().assign(fruit="apple"))
    data = _spec({"source": "csv", "path": "one.csv", "label": "fruit"}).data
    with pytest.raises(DataLoadError) as excinfo:
        load_data(data, tmp_path)
    message = str(excinfo.value)
    assert message.startswith(f"data (csv): {tmp_path / 'one.csv'}: ")
    assert "need at least 2 classes" in message and "apple" in message


def test_too_few_rows_for_the_splits_names_the_file(tmp_path: Path) -> None:
    write_csv(tmp_path / "few.csv", fruit_table(n=5))
    data = _spec({"source": "csv", "path": "few.csv", "label": "fruit", "val_fraction": 0.4}).data
    with pytest.raises(DataLoadError, match=r"few\.csv: 5 rows are too few"):
        load_data(data, tmp_path)


def test_mismatched_lengths_through_the_spec(tmp_path: Path) -> None:
    write_npz(tmp_path / "d.npz", X=np.ones((10, 2)), y=np.arange(8) % 2)
    with pytest.raises(DataLoadError, match=r"d\.npz: array 'X' has 10 rows but 'y' has 8"):
        load_data(_spec({"source": "npz", "path": "d.npz"}).data, tmp_path)


def test_class_mapping_param_is_json_in_output_order(tmp_path: Path) -> None:
    write_csv(tmp_path / "fruit.csv", fruit_table())
    data = _spec(
        {"source": "csv", "path": "fruit.csv", "label": "fruit", "classes": ["pear", "apple", 3]}
    ).data
    with pytest.raises(DataLoadError, match="'orange'"):
        load_data(data, tmp_path)
    splits = load_data(
        _spec({"source": "csv", "path": "fruit.csv", "label": "fruit"}).data, tmp_path
    )
    assert json.loads(class_names_param(splits)) == ["apple", "orange", "pear"]


def test_the_readme_example_loads() -> None:
    spec = load_spec(EXAMPLES / "csv.yaml")
    splits = load_data(spec.data, EXAMPLES)
    assert splits.sizes() == {"train": 180, "val": 60, "test": 60}
    assert splits.class_names == ("apple", "orange", "pear") and splits.n_features == 5


# --- a small sweep on each format --------------------------------------------------------


def _csv(folder: Path) -> str:
    write_csv(folder / "data" / "fruit.csv", fruit_table(n=120))
    return "{source: csv, path: data/fruit.csv, label: fruit}"


def _parquet(folder: Path) -> str:
    pytest.importorskip("pyarrow")
    (folder / "data").mkdir()
    fruit_table(n=120).to_parquet(folder / "data" / "fruit.parquet")
    return "{source: parquet, path: data/fruit.parquet, label: fruit, features: [weight, height]}"


def _npz(folder: Path) -> str:
    write_npz(folder / "data" / "arrays.npz", n=120)
    return "{source: npz, path: data/arrays.npz}"


def _mnist(folder: Path) -> str:
    fake_mnist(folder / "images", n_train=100, n_test=30, gz=True)
    return "{source: torchvision, dataset: mnist, root: images, val_fraction: 0.2}"


def _fashion(folder: Path) -> str:
    fake_mnist(folder / "images", folder="FashionMNIST/raw", n_train=100, n_test=30)
    return "{source: torchvision, dataset: fashion_mnist, root: images}"


def _cifar(folder: Path) -> str:
    fake_cifar10(folder / "images", per_batch=20, n_test=30)
    return "{source: torchvision, dataset: cifar10, root: images}"


@pytest.mark.parametrize(
    ("write", "sizes", "n_classes"),
    [
        (_csv, {"train": 72, "val": 24, "test": 24}, 3),
        (_parquet, {"train": 72, "val": 24, "test": 24}, 3),
        (_npz, {"train": 72, "val": 24, "test": 24}, 3),
        (_mnist, {"train": 80, "val": 20, "test": 30}, 10),
        (_fashion, {"train": 80, "val": 20, "test": 30}, 10),
        (_cifar, {"train": 80, "val": 20, "test": 30}, 10),
    ],
    ids=["csv", "parquet", "npz", "mnist", "fashion_mnist", "cifar10"],
)
def test_small_sweep_on_each_format(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    write: Callable[[Path], str],
    sizes: dict[str, int],
    n_classes: int,
) -> None:
    folder = tmp_path / "project"
    folder.mkdir()
    data_yaml = write(folder)
    spec_file = folder / "sweep.yaml"
    spec_file.write_text(
        f"name: small\ndata: {data_yaml}\n"
        "space: {learning_rate: {values: [0.05, 0.5]}}\n"
        "fixed: {epochs: 2, batch_size: 16, hidden_units: 16}\n"
    )
    monkeypatch.chdir(tmp_path)  # paths resolve against the spec's folder, not the cwd
    spec = load_spec(spec_file)
    splits = load_data(spec.data, spec_file.parent)
    assert splits.sizes() == sizes and splits.n_classes == n_classes
    assert np.abs(splits.x_train.mean(axis=0)).max() < 1e-4  # scaled with train statistics

    tensors = TensorSplits.from_splits(splits, "cpu")
    definition = get_trainable(spec.trainable)
    for learning_rate in (0.05, 0.5):
        config = {**spec.fixed, "learning_rate": learning_rate}
        session = definition.make_session(config, tensors, "cpu")
        results = [session.step() for _ in range(2)]
        assert session.finished
        assert all(math.isfinite(r["val_loss"]) for r in results)
        assert 0.0 <= results[-1]["val_accuracy"] <= 1.0
        test_loss, _ = session.evaluate(tensors.x_test, tensors.y_test)
        assert math.isfinite(test_loss)
