"""Trainable names to definitions.

A sweep spec names its trainable by string; this registry is the one place
that maps that name to a config model (what a spec may set), the metrics it
reports with their natural direction (what a spec may optimize), and a
session factory (how a trial runs). The orchestrator validates specs and
runs trials through it without importing any model code by name.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import pydantic

from trainables.config import SHAPE_FIELDS, MlpConfig

if TYPE_CHECKING:  # torch is imported by the sessions, not by looking a trainable up
    import torch

    from trainables.train import TensorSplits, TrainingSession

__all__ = [
    "BN_SOFTMAX_MLP",
    "Packing",
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
    # How several trials of one shape train as one fused model; None: this trainable does not.
    packing: Packing | None = None

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


@dataclass(frozen=True)
class Packing:
    """A trainable's fused training: K trials whose configs share ``shape_key`` train as one
    model (``make_pack``), each member reporting what its own session would. ``shape_fields``
    are the config keys members must share (a sweep draws them once per pack);
    ``auto_size(config, device_kind, waiting, n_features, n_classes)`` is how many to fuse."""

    shape_fields: tuple[str, ...]
    shape_key: Callable[[Mapping[str, Any]], Hashable]
    make_pack: Callable[[Sequence[Mapping[str, Any]], TensorSplits, torch.device | str], Any]
    auto_size: Callable[[Mapping[str, Any], str, int, int, int], int]


class UnknownTrainableError(KeyError):
    """A trainable name that is not registered.

    A KeyError because it is a failed lookup; ``__str__`` is overridden since
    KeyError would otherwise print the message wrapped in quotes.
    """

    def __init__(self, name: str, valid: tuple[str, ...], reason: str | None = None) -> None:
        self.name = name
        self.valid = valid
        super().__init__(
            reason
            or f"unknown trainable {name!r}; registered: {', '.join(valid) or '(none)'}, "
            "or name your own as package.module:NAME"
        )

    def __str__(self) -> str:
        return str(self.args[0])


# Process-wide on purpose, like ``sys.modules``, whose lifetime it shares: a trainable module
# registers its definitions when it is imported (``register`` at the bottom of this file), and
# every process (the driver, each trial worker) looks a spec's name up in its own. It holds
# names, never import paths: registered definitions, and those found by entry point (installed
# packages do not change under a running process, so the read is a cache that cannot go stale).
# An import path is resolved by ``references.import_trainable`` each time, which knows a file's
# content. Invariant: a name, once here, always means the same definition object.
_REGISTRY: dict[str, TrainableDefinition] = {}


def register(definition: TrainableDefinition) -> None:
    """Add a trainable. Registering the same definition again is a no-op (a
    re-imported module); a different one under a taken name is an error, since
    silently replacing it would change what existing specs run."""
    existing = _REGISTRY.get(definition.name)
    if existing is not None and existing is not definition:
        raise ValueError(f"a trainable named {definition.name!r} is already registered")
    _REGISTRY[definition.name] = definition


def get_trainable(name: str, search_path: Sequence[str | Path] = ()) -> TrainableDefinition:
    """The trainable a spec names: a registered name, an import path ``package.module:NAME``
    (``search_path``, the spec's folder, first), or a ``caviar.trainables`` entry point.

    One found by entry point is registered under its name, so later lookups in this process
    are a dictionary read. One found by import path is not: the same ``models:NAME`` may name
    another folder's ``models.py``, or an edited one, in a later sweep of the same process
    (``caviar up``'s driver), and ``import_trainable`` tells them apart by file and content
    (a lookup of unchanged code is the module already imported). Raises
    :class:`UnknownTrainableError` with the reason (a missing module, attribute, or
    something that is not a trainable).
    """
    from trainables.references import (
        TrainableReferenceError,
        entry_point_trainable,
        import_trainable,
        is_import_path,
    )

    found = _REGISTRY.get(name)
    if found is not None:
        return found
    try:
        if is_import_path(name):
            return import_trainable(name, search_path)
        found = entry_point_trainable(name)
    except TrainableReferenceError as error:
        raise UnknownTrainableError(name, trainable_names(), str(error)) from None
    if found is None:
        raise UnknownTrainableError(name, trainable_names())
    _REGISTRY[name] = found
    return found


def trainable_names() -> tuple[str, ...]:
    """Registered names (not import paths), sorted, for error messages and CLI listings."""
    return tuple(sorted(n for n in _REGISTRY if ":" not in n))


def _bn_softmax_mlp_session(
    config: Mapping[str, Any], tensors: TensorSplits, device: torch.device | str
) -> TrainingSession:
    """The MLP's training session, imported when a trial needs it: validating a spec against
    the registry must not cost torch's import (a second, on the path to Ray's start)."""
    from trainables.train import TrainingSession

    return TrainingSession(config, tensors, device)


def _bn_softmax_mlp_shape(config: Mapping[str, Any]) -> Hashable:
    from trainables.pack import shape_key

    return shape_key(config)


def _bn_softmax_mlp_pack(
    configs: Sequence[Mapping[str, Any]], tensors: TensorSplits, device: torch.device | str
) -> Any:
    from trainables.pack import PackSession

    return PackSession(configs, tensors, device)


def _bn_softmax_mlp_pack_size(
    config: Mapping[str, Any], device_kind: str, waiting: int, n_features: int, n_classes: int
) -> int:
    from trainables.pack import auto_pack_size

    return auto_pack_size(config, device_kind, waiting, n_features=n_features, n_classes=n_classes)


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
    packing=Packing(
        shape_fields=SHAPE_FIELDS,
        shape_key=_bn_softmax_mlp_shape,
        make_pack=_bn_softmax_mlp_pack,
        auto_size=_bn_softmax_mlp_pack_size,
    ),
)

register(BN_SOFTMAX_MLP)
