"""Trainable names to definitions.

A sweep spec names its trainable by string; this registry is the one place
that maps that name to a config model (what a spec may set), the metrics it
reports with their natural direction (what a spec may optimize), and a
session factory (how a trial runs). The orchestrator validates specs and
runs trials through it without importing any model code by name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import pydantic

from trainables.config import MlpConfig

if TYPE_CHECKING:  # torch is imported by the sessions, not by looking a trainable up
    import torch

    from trainables.train import TensorSplits, TrainingSession

__all__ = [
    "BN_SOFTMAX_MLP",
    "TrainableDefinition",
    "UnknownTrainableError",
    "get_trainable",
    "register",
    "trainable_names",
]


@dataclass(frozen=True)
class TrainableDefinition:
    """Everything the orchestrator needs to know about one trainable.

    ``metrics`` maps each reported metric to the direction in which it
    improves, so a spec can say ``metric: val_loss`` without also having to
    get ``mode: min`` right.
    """

    name: str
    description: str
    config_model: type[pydantic.BaseModel]
    metrics: Mapping[str, str]
    make_session: Callable[[Mapping[str, Any], TensorSplits, torch.device | str], TrainingSession]

    def __post_init__(self) -> None:
        if not self.name or not self.name.strip():
            raise ValueError("a trainable needs a non-empty name")
        if not self.metrics:
            raise ValueError(f"trainable {self.name!r} declares no metrics")
        bad = {metric: mode for metric, mode in self.metrics.items() if mode not in ("max", "min")}
        if bad:
            raise ValueError(
                f"trainable {self.name!r}: metric modes must be 'max' or 'min', got {bad}"
            )
        # Freeze the mapping too, so a caller cannot change a shared definition.
        object.__setattr__(self, "metrics", MappingProxyType(dict(self.metrics)))

    def parameter_names(self) -> tuple[str, ...]:
        """The keys a spec may set or search for this trainable."""
        return tuple(self.config_model.model_fields)


class UnknownTrainableError(KeyError):
    """A trainable name that is not registered.

    A KeyError because it is a failed lookup; ``__str__`` is overridden since
    KeyError would otherwise print the message wrapped in quotes.
    """

    def __init__(self, name: str, valid: tuple[str, ...]) -> None:
        self.name = name
        self.valid = valid
        super().__init__(
            f"unknown trainable {name!r}; valid names: {', '.join(valid) or '(none registered)'}"
        )

    def __str__(self) -> str:
        return str(self.args[0])


_REGISTRY: dict[str, TrainableDefinition] = {}


def register(definition: TrainableDefinition) -> None:
    """Add a trainable. Registering the same definition again is a no-op (a
    re-imported module); a different one under a taken name is an error, since
    silently replacing it would change what existing specs run."""
    existing = _REGISTRY.get(definition.name)
    if existing is not None and existing is not definition:
        raise ValueError(f"a trainable named {definition.name!r} is already registered")
    _REGISTRY[definition.name] = definition


def get_trainable(name: str) -> TrainableDefinition:
    """Look up a trainable by the name a spec uses."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownTrainableError(name, trainable_names()) from None


def trainable_names() -> tuple[str, ...]:
    """Registered names, sorted, for error messages and CLI listings."""
    return tuple(sorted(_REGISTRY))


def _bn_softmax_mlp_session(
    config: Mapping[str, Any], tensors: TensorSplits, device: torch.device | str
) -> TrainingSession:
    """The MLP's training session, imported when a trial needs it: validating a spec against
    the registry must not cost torch's import (a second, on the path to Ray's start)."""
    from trainables.train import TrainingSession

    return TrainingSession(config, tensors, device)


BN_SOFTMAX_MLP = TrainableDefinition(
    name="bn_softmax_mlp",
    description=(
        "Fully connected softmax classifier with BatchNorm before each hidden "
        "activation, trained with mini-batch SGD/Adam/RMSprop; one step is one epoch."
    ),
    config_model=MlpConfig,
    metrics={
        "val_accuracy": "max",
        "val_loss": "min",
        "train_accuracy": "max",
        "train_loss": "min",
    },
    make_session=_bn_softmax_mlp_session,
)

register(BN_SOFTMAX_MLP)
