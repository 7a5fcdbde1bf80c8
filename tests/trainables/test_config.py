"""MlpConfig validation."""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import ValidationError

from trainables import MlpConfig


def test_defaults_validate() -> None:
    config = MlpConfig()
    assert config.learning_rate == 0.01
    assert config.optimizer == "sgd"
    assert config.momentum == 0.9
    assert config.batch_size == 64
    assert config.layers == 2
    assert config.batch_norm is True
    assert config.bn_eval == "ewma"
    assert config.bn_momentum == 0.1
    assert config.epochs == 30
    assert config.seed == 0


def test_every_field_has_a_description() -> None:
    for name, field in MlpConfig.model_fields.items():
        assert field.description, name


def test_extra_keys_rejected() -> None:
    with pytest.raises(ValidationError, match="learning_rat"):
        MlpConfig.model_validate({"learning_rat": 0.1})


def test_integral_float_accepted_as_int() -> None:
    config = MlpConfig.model_validate({"batch_size": 64.0, "layers": 3.0, "epochs": 5.0})
    assert config.batch_size == 64 and isinstance(config.batch_size, int)
    assert config.layers == 3 and isinstance(config.layers, int)


def test_fractional_float_rejected_for_int() -> None:
    with pytest.raises(ValidationError, match="batch_size"):
        MlpConfig.model_validate({"batch_size": 64.5})


def test_bool_rejected_for_numbers() -> None:
    with pytest.raises(ValidationError, match="boolean"):
        MlpConfig.model_validate({"layers": True})


def test_nesterov_with_sgd_momentum_accepted() -> None:
    assert MlpConfig(nesterov=True, momentum=0.9).nesterov is True


@pytest.mark.parametrize(
    "values",
    [
        {"nesterov": True, "optimizer": "adam"},
        {"nesterov": True, "optimizer": "rmsprop"},
        {"nesterov": True, "optimizer": "sgd", "momentum": 0.0},
    ],
)
def test_nesterov_rejected_outside_sgd_with_momentum(values: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="nesterov"):
        MlpConfig.model_validate(values)


def test_batch_size_one_rejected_with_batch_norm() -> None:
    with pytest.raises(ValidationError, match="batch_size"):
        MlpConfig(batch_size=1)
    # Without BN (or without hidden layers) a single-row batch is fine.
    assert MlpConfig(batch_size=1, batch_norm=False).batch_size == 1
    assert MlpConfig(batch_size=1, layers=0).batch_size == 1


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("learning_rate", 0.0),
        ("learning_rate", -1.0),
        ("learning_rate", math.nan),
        ("learning_rate", math.inf),
        ("momentum", 1.0),
        ("momentum", -0.1),
        ("beta1", 1.0),
        ("beta2", 1.0),
        ("eps", 0.0),
        ("batch_size", 0),
        ("hidden_units", 0),
        ("layers", -1),
        ("bn_momentum", 0.0),
        ("bn_momentum", 1.01),
        ("lr_decay", -0.5),
        ("weight_decay", -1e-4),
        ("epochs", 0),
        ("seed", -1),
        ("optimizer", "lbfgs"),
        ("activation", "gelu"),
        ("bn_eval", "batch"),
    ],
)
def test_out_of_range_values_rejected(field: str, value: Any) -> None:
    with pytest.raises(ValidationError, match=field):
        MlpConfig.model_validate({field: value})


@pytest.mark.parametrize(
    ("field", "value"),
    [("bn_momentum", 1.0), ("momentum", 0.0), ("layers", 0), ("lr_decay", 0.0)],
)
def test_boundary_values_accepted(field: str, value: Any) -> None:
    assert getattr(MlpConfig.model_validate({field: value}), field) == value
