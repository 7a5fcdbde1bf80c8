"""Trainable registry lookups."""

from __future__ import annotations

from typing import Any

import pytest

import trainables.registry as registry
from trainables import (
    MlpConfig,
    TensorSplits,
    TrainableDefinition,
    TrainingSession,
    UnknownTrainableError,
    get_trainable,
    register,
    trainable_names,
)


@pytest.fixture
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations made by a test must not leak into the next."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def _definition(name: str = "custom", **overrides: Any) -> TrainableDefinition:
    fields: dict[str, Any] = {
        "name": name,
        "description": "test double",
        "config_model": MlpConfig,
        "metrics": {"val_accuracy": "max"},
        "make_session": TrainingSession,
    }
    fields.update(overrides)
    return TrainableDefinition(**fields)


def test_bn_softmax_mlp_is_registered() -> None:
    definition = get_trainable("bn_softmax_mlp")
    assert definition.name == "bn_softmax_mlp"
    assert definition.config_model is MlpConfig
    assert "bn_softmax_mlp" in trainable_names()
    assert dict(definition.metrics) == {
        "val_accuracy": "max",
        "val_loss": "min",
        "train_accuracy": "max",
        "train_loss": "min",
    }
    assert definition.description


def test_parameter_names_are_the_config_fields() -> None:
    names = get_trainable("bn_softmax_mlp").parameter_names()
    assert names == tuple(MlpConfig.model_fields)
    assert {"learning_rate", "batch_size", "bn_eval", "seed"} <= set(names)


def test_make_session_builds_a_working_session(small_tensors: TensorSplits) -> None:
    definition = get_trainable("bn_softmax_mlp")
    session = definition.make_session({"epochs": 1, "hidden_units": 8}, small_tensors, "cpu")
    result = session.step()
    assert session.finished
    assert set(definition.metrics) <= set(result)


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(UnknownTrainableError) as excinfo:
        get_trainable("resnet")
    message = str(excinfo.value)
    assert "resnet" in message
    assert "bn_softmax_mlp" in message
    assert not message.startswith('"')  # not KeyError's quoted repr
    assert isinstance(excinfo.value, KeyError)


def test_register_adds_a_trainable(isolated_registry: None) -> None:
    definition = _definition("custom")
    register(definition)
    assert get_trainable("custom") is definition
    names = trainable_names()
    assert "bn_softmax_mlp" in names and "custom" in names  # others may be registered
    assert list(names) == sorted(names)
    register(definition)  # the same definition again is harmless


def test_register_refuses_to_replace_a_name(isolated_registry: None) -> None:
    with pytest.raises(ValueError, match="already registered"):
        register(_definition("bn_softmax_mlp"))
    assert get_trainable("bn_softmax_mlp").config_model is MlpConfig


def test_registry_isolation_holds() -> None:
    assert "custom" not in trainable_names()


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"name": " "}, "name"),
        ({"metrics": {}}, "metrics"),
        ({"metrics": {"val_loss": "minimize"}}, "'max' or 'min'"),
    ],
)
def test_definition_validation(overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _definition(**overrides)


def test_definition_metrics_are_read_only() -> None:
    definition = get_trainable("bn_softmax_mlp")
    with pytest.raises(TypeError):
        definition.metrics["new"] = "max"  # type: ignore[index]
