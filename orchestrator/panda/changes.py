"""What a person (or a rule) may change in a panda session, checked before anything is sent.

``NAME=VALUE`` words from the command line become a dict of typed values (YAML scalars, so
``1e-3``, ``64`` and ``true`` read as a person means them); a change is accepted only if the
trainable can make it between epochs (``adjustable``) and the whole new configuration
validates. Every refusal is a :class:`PandaError`: one line saying what and why, exit 2.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from orchestrator.errors import CaviarError
from orchestrator.spec.yaml_text import YamlShapeError, load_yaml

# Short names a person types for the parameters they mean.
ALIASES = {"lr": "learning_rate", "wd": "weight_decay"}

# Why a parameter that is not adjustable cannot change mid-training (the generic reason
# otherwise). Shape first: the kept weights are what a branch continues from.
REASONS = {
    "layers": "it changes the network's shape, so the kept weights would not fit",
    "hidden_units": "it changes the network's shape, so the kept weights would not fit",
    "batch_norm": "it adds or removes layers, so the kept weights would not fit",
    "activation": "it changes the function the kept weights were trained for",
    "optimizer": "it changes the optimizer's kind, whose saved moments would not carry over",
    "nesterov": "it changes the update rule's kind",
    "seed": "it fixes the initial weights and the shuffling, which a session keeps",
}


class PandaError(CaviarError):
    """A panda command that cannot be carried out as given (one line, exit 2)."""

    exit_code = 2


def parse_assignments(words: Sequence[str]) -> dict[str, Any]:
    """``["lr=0.01", "batch_size=64"]`` -> ``{"learning_rate": 0.01, "batch_size": 64}``."""
    changes: dict[str, Any] = {}
    for word in words:
        name, sep, text = word.partition("=")
        name = name.strip()
        if not sep or not name or not text.strip():
            raise PandaError(f"expected NAME=VALUE, got {word!r} (for example learning_rate=0.01)")
        try:
            value = _scalar(text.strip())
        except YamlShapeError:  # nested or aliased past any scalar: refused as one below
            value = None
        if isinstance(value, (dict, list)) or value is None:
            raise PandaError(f"{name}: expected a number, a word or true/false, got {text!r}")
        changes[ALIASES.get(name, name)] = value
    return changes


def _scalar(text: str) -> Any:
    """A number as Python reads it (``1e-3``, which YAML 1.1 leaves a string), else YAML's
    reading (``true``, words)."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    try:
        return load_yaml(text)  # caviar's one YAML loader: bounded, like a spec's
    except YamlShapeError:
        raise
    except yaml.YAMLError:
        return text


def check_known(changes: Iterable[str], known: Iterable[str], trainable: str) -> None:
    """Every name is one of the trainable's parameters (a close match is suggested)."""
    valid = sorted(known)
    for name in changes:
        if name not in valid:
            close = difflib.get_close_matches(name, valid, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise PandaError(f"{trainable} has no parameter {name!r}{hint}")


def check_adjustable(changes: Iterable[str], adjustable: frozenset[str]) -> None:
    """Every name may change between epochs; the first that may not is refused with why."""
    for name in changes:
        if name not in adjustable:
            reason = REASONS.get(name, "it is fixed for the whole session")
            allowed = ", ".join(sorted(adjustable)) or "nothing (this trainable has no adjust)"
            raise PandaError(
                f"cannot change {name} mid-training: {reason} (adjustable: {allowed}); "
                f"start a new session with --set {name}=... instead"
            )


def validated(
    config_model: type[BaseModel], config: Mapping[str, Any], changes: Mapping[str, Any]
) -> dict[str, Any]:
    """``config`` with ``changes``, validated as a whole by the trainable's config model."""
    merged = {**config, **changes}
    try:
        config_model.model_validate(merged)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or ", ".join(changes)
        value = merged.get(where, "")
        raise PandaError(f"{where}={value}: {first['msg']}") from None
    return merged


def adjustable_parameters(trainable: str) -> frozenset[str]:
    """What the trainable's session can change between epochs (its ``adjustable``)."""
    from trainables.adjustable import adjustable_of  # no torch: `adjust` answers at once
    from trainables.registry import get_trainable

    return adjustable_of(get_trainable(trainable))


def check_changes(
    trainable: str,
    config_model: type[BaseModel],
    config: Mapping[str, Any],
    changes: Mapping[str, Any],
) -> dict[str, Any]:
    """The new config, or the :class:`PandaError` that says why the changes are refused."""
    check_known(changes, config_model.model_fields, trainable)
    check_adjustable(changes, adjustable_parameters(trainable))
    return validated(config_model, config, changes)
