"""Datasets, splits and standardization."""

from __future__ import annotations

import numpy as np
import pytest

from trainables import (
    BUNDLED_DATASETS,
    DataError,
    DataSplits,
    load_bundled,
    make_synthetic,
    split_and_scale,
    split_and_scale_with_test,
)

EXPECTED_SHAPES = {
    "digits": (1797, 64, 10),
    "iris": (150, 4, 3),
    "wine": (178, 13, 3),
    "breast_cancer": (569, 30, 2),
}


def _split(x: np.ndarray, y: np.ndarray, **overrides: object) -> DataSplits:
    kwargs: dict[str, object] = {
        "val_fraction": 0.2,
        "test_fraction": 0.2,
        "seed": 0,
        "standardize": True,
    }
    kwargs.update(overrides)
    return split_and_scale(x, y, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", BUNDLED_DATASETS)
def test_load_bundled_shapes_and_names(name: str) -> None:
    x, y, class_names, feature_names = load_bundled(name)
    rows, features, classes = EXPECTED_SHAPES[name]
    assert x.shape == (rows, features)
    assert y.shape == (rows,)
    assert len(class_names) == classes == len(np.unique(y))
    assert len(feature_names) == features
    assert all(isinstance(n, str) for n in class_names + feature_names)


def test_load_bundled_unknown_name_lists_valid_names() -> None:
    with pytest.raises(DataError) as excinfo:
        load_bundled("mnist")
    message = str(excinfo.value)
    assert "mnist" in message
    for name in BUNDLED_DATASETS:
        assert name in message


def test_split_sizes_match_fractions(digits_splits: DataSplits) -> None:
    sizes = digits_splits.sizes()
    assert sum(sizes.values()) == 1797
    assert abs(sizes["val"] - 0.2 * 1797) <= 1
    assert abs(sizes["test"] - 0.2 * 1797) <= 1
    assert digits_splits.n_features == 64
    assert digits_splits.n_classes == 10


def test_split_dtypes(digits_splits: DataSplits) -> None:
    for array in (digits_splits.x_train, digits_splits.x_val, digits_splits.x_test):
        assert array.dtype == np.float32
    for array in (digits_splits.y_train, digits_splits.y_val, digits_splits.y_test):
        assert array.dtype == np.int64


def test_split_keeps_class_proportions() -> None:
    # Imbalanced 3-class labels: 60% / 30% / 10%.
    y = np.repeat([0, 1, 2], [600, 300, 100])
    x = np.random.default_rng(0).normal(size=(1000, 3))
    splits = _split(x, y, val_fraction=0.2, test_fraction=0.1)
    for labels in (splits.y_train, splits.y_val, splits.y_test):
        proportions = np.bincount(labels, minlength=3) / len(labels)
        np.testing.assert_allclose(proportions, [0.6, 0.3, 0.1], atol=0.011)


def test_split_is_deterministic_by_seed() -> None:
    x, y, _, _ = load_bundled("iris")
    first = _split(x, y, seed=3)
    again = _split(x, y, seed=3)
    other = _split(x, y, seed=4)
    np.testing.assert_array_equal(first.x_train, again.x_train)
    np.testing.assert_array_equal(first.y_val, again.y_val)
    assert not np.array_equal(first.x_train, other.x_train)


def test_splits_are_disjoint_and_cover_all_rows() -> None:
    # Unique rows let us recover which original row went where.
    x = np.arange(200, dtype=np.float64).reshape(100, 2)
    y = np.arange(100) % 4
    splits = _split(x, y, standardize=False)
    keys = [tuple(row) for part in (splits.x_train, splits.x_val, splits.x_test) for row in part]
    assert len(keys) == len(set(keys)) == 100


def test_standardization_uses_train_statistics_only(digits_splits: DataSplits) -> None:
    x_train = digits_splits.x_train.astype(np.float64)
    non_constant = x_train.std(axis=0) > 0
    np.testing.assert_allclose(x_train.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(x_train.std(axis=0)[non_constant], 1.0, atol=1e-4)
    # Validation is scaled with the train statistics, so its own mean is not 0.
    x_val = digits_splits.x_val.astype(np.float64)
    assert np.abs(x_val.mean(axis=0)).max() > 1e-3


def test_standardization_matches_train_formula() -> None:
    x = np.random.default_rng(1).normal(loc=5.0, scale=3.0, size=(80, 3))
    y = np.arange(80) % 2
    raw = _split(x, y, standardize=False)
    scaled = _split(x, y, standardize=True)
    mean = raw.x_train.astype(np.float64).mean(axis=0)
    std = raw.x_train.astype(np.float64).std(axis=0)
    np.testing.assert_allclose(scaled.x_val, (raw.x_val - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scaled.x_test, (raw.x_test - mean) / std, rtol=1e-5, atol=1e-5)


def test_constant_feature_stays_finite() -> None:
    x = np.column_stack([np.full(40, 7.0), np.arange(40.0)])
    y = np.arange(40) % 2
    splits = _split(x, y)
    assert np.all(np.isfinite(splits.x_train))
    np.testing.assert_array_equal(splits.x_train[:, 0], 0.0)


def test_labels_are_remapped_to_indices() -> None:
    x = np.random.default_rng(2).normal(size=(60, 2))
    y = np.repeat([10, 20, 30], 20)
    splits = _split(x, y, class_names=("a", "b", "c"))
    assert set(np.unique(splits.y_train)) == {0, 1, 2}
    assert splits.class_names == ("a", "b", "c")


def test_remap_keeps_names_of_present_index_labels() -> None:
    x = np.random.default_rng(3).normal(size=(40, 2))
    y = np.repeat([0, 2], 20)  # class 1 is absent
    splits = _split(x, y, class_names=("zero", "one", "two"))
    assert splits.class_names == ("zero", "two")
    assert set(np.unique(splits.y_train)) == {0, 1}


def test_string_labels_get_names_by_default() -> None:
    x = np.random.default_rng(4).normal(size=(30, 2))
    y = np.array(["cat", "dog", "eel"] * 10)
    splits = _split(x, y)
    assert splits.class_names == ("cat", "dog", "eel")
    assert splits.feature_names == ("x0", "x1")


def test_falls_back_to_unstratified_when_a_class_has_one_row() -> None:
    x = np.random.default_rng(5).normal(size=(31, 2))
    y = np.array([0] * 15 + [1] * 15 + [2])
    splits = _split(x, y)
    assert sum(splits.sizes().values()) == 31
    assert splits.n_classes == 3


def test_too_few_rows_raises_clear_error() -> None:
    x = np.zeros((4, 2))
    y = np.array([0, 1, 2, 3])
    with pytest.raises(DataError, match="too few"):
        _split(x, y, val_fraction=0.25, test_fraction=0.25)


def test_train_needs_two_rows() -> None:
    x = np.random.default_rng(6).normal(size=(3, 2))
    y = np.array([0, 1, 0])
    with pytest.raises(DataError, match="training needs at least 2"):
        _split(x, y, val_fraction=0.3, test_fraction=0.3)


def test_single_class_raises_clear_error() -> None:
    x = np.random.default_rng(7).normal(size=(20, 2))
    y = np.zeros(20, dtype=int)
    with pytest.raises(DataError, match="at least 2 classes"):
        _split(x, y)


@pytest.mark.parametrize(
    ("val_fraction", "test_fraction"), [(0.0, 0.2), (0.2, 0.0), (0.5, 0.5), (1.2, 0.1)]
)
def test_bad_fractions_raise(val_fraction: float, test_fraction: float) -> None:
    x, y, _, _ = load_bundled("iris")
    with pytest.raises(DataError, match="fraction"):
        _split(x, y, val_fraction=val_fraction, test_fraction=test_fraction)


def test_mismatched_rows_raise() -> None:
    with pytest.raises(DataError, match="rows"):
        _split(np.zeros((10, 2)), np.zeros(9))


def test_non_finite_features_raise() -> None:
    x = np.ones((20, 2))
    x[3, 1] = np.nan
    with pytest.raises(DataError, match="nan"):
        _split(x, np.arange(20) % 2)


def test_synthetic_shapes() -> None:
    x, y, class_names, feature_names = make_synthetic(200, 10, 4, seed=0)
    assert x.shape == (200, 10)
    assert set(np.unique(y)) == {0, 1, 2, 3}
    assert class_names == ("class_0", "class_1", "class_2", "class_3")
    assert len(feature_names) == 10


def test_synthetic_is_deterministic_by_seed() -> None:
    x1, y1, _, _ = make_synthetic(100, 6, 3, seed=11)
    x2, y2, _, _ = make_synthetic(100, 6, 3, seed=11)
    x3, y3, _, _ = make_synthetic(100, 6, 3, seed=12)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(x1, x3)


@pytest.mark.parametrize(("n_features", "n_classes"), [(1, 2), (2, 4), (3, 8), (20, 10)])
def test_synthetic_handles_few_features(n_features: int, n_classes: int) -> None:
    x, y, _, _ = make_synthetic(400, n_features, n_classes, seed=0)
    assert x.shape == (400, n_features)
    assert len(np.unique(y)) == n_classes


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((100, 1, 3), "informative"),
        ((100, 5, 1), "n_classes"),
        ((0, 5, 2), "n_samples"),
        ((100, 0, 2), "n_features"),
        ((2, 5, 3), "n_samples"),
    ],
)
def test_synthetic_impossible_raises(args: tuple[int, int, int], match: str) -> None:
    with pytest.raises(DataError, match=match):
        make_synthetic(*args, seed=0)


def _with_test(n_train: int = 200, n_test: int = 50, **overrides: object) -> DataSplits:
    rng = np.random.default_rng(8)
    y = np.arange(n_train) % 4
    y_test = np.arange(n_test) % 4
    x = (rng.normal(size=(n_train, 3)) + y[:, None]).astype(np.float32)
    x_test = (rng.normal(size=(n_test, 3)) + 10.0).astype(np.float32)  # shifted: own scale
    kwargs: dict[str, object] = {"val_fraction": 0.25, "seed": 0, "standardize": True}
    kwargs.update(overrides)
    return split_and_scale_with_test(x, y, x_test, y_test, **kwargs)  # type: ignore[arg-type]


def test_own_test_set_is_kept_and_val_is_carved_from_train() -> None:
    splits = _with_test()
    assert splits.sizes() == {"train": 150, "val": 50, "test": 50}
    np.testing.assert_array_equal(splits.y_test, np.arange(50) % 4)
    # Stratified: every class keeps its share in val.
    counts = np.bincount(splits.y_val)
    assert counts.sum() == 50 and set(counts) <= {12, 13}


def test_own_test_set_is_scaled_with_train_statistics_only() -> None:
    splits = _with_test()
    np.testing.assert_allclose(splits.x_train.mean(axis=0), 0.0, atol=1e-5)
    assert splits.x_test.mean() > 5  # the shifted test set was not re-centred on itself


def test_own_test_set_labels_share_one_mapping() -> None:
    x = np.random.default_rng(0).normal(size=(40, 2))
    y = np.array(["b", "c"] * 20)
    splits = split_and_scale_with_test(
        x, y, x[:6], np.array(["a", "b", "c"] * 2), val_fraction=0.2, seed=0, standardize=False
    )
    assert splits.class_names == ("a", "b", "c")
    assert list(splits.y_test[:3]) == [0, 1, 2]


@pytest.mark.parametrize(
    ("overrides", "match"),
    [({"n_train": 4}, "training rows are too few"), ({"val_fraction": 1.0}, "val_fraction")],
)
def test_own_test_set_errors(overrides: dict[str, object], match: str) -> None:
    with pytest.raises(DataError, match=match):
        _with_test(**overrides)


def test_own_test_set_needs_matching_features_and_two_classes() -> None:
    x = np.ones((20, 3))
    with pytest.raises(DataError, match="3 features but test rows have 2"):
        split_and_scale_with_test(
            x,
            np.arange(20) % 2,
            np.ones((4, 2)),
            np.arange(4) % 2,
            val_fraction=0.2,
            seed=0,
            standardize=True,
        )
    with pytest.raises(DataError, match="at least 2 classes"):
        split_and_scale_with_test(
            x, np.zeros(20), x[:4], np.zeros(4), val_fraction=0.2, seed=0, standardize=True
        )


def test_float32_input_is_scaled_in_float32_to_the_same_values() -> None:
    x = np.random.default_rng(9).normal(loc=3.0, size=(100, 5))
    y = np.arange(100) % 2
    wide = _split(x, y)
    narrow = _split(x.astype(np.float32), y)
    np.testing.assert_allclose(narrow.x_val, wide.x_val, rtol=1e-5, atol=1e-5)
    assert narrow.x_train.dtype == np.float32
