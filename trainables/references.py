"""Finding a trainable a spec names by import path or entry point, with one clear error each way.

``package.module:NAME`` is imported with the given folders (the spec's) first on ``sys.path``,
so a ``models.py`` beside the spec is found on the driver and, given the same folders, on every
trial worker. A bare name that is not registered is looked up among the ``caviar.trainables``
entry points of installed packages. Either way the result must be a
:class:`~trainables.registry.TrainableDefinition`.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainables.registry import TrainableDefinition

ENTRY_POINT_GROUP = "caviar.trainables"
HOW_TO = "see the README's 'Your own model'"


class TrainableReferenceError(LookupError):
    """A spec's ``trainable`` that cannot be turned into a trainable; the message says why."""


def is_import_path(reference: str) -> bool:
    return ":" in reference


def import_trainable(reference: str, search_path: Sequence[str | Path] = ()) -> TrainableDefinition:
    """The trainable at ``package.module:NAME``; ``search_path`` folders are tried first."""
    module_name, _, attribute = reference.partition(":")
    module_name, attribute = module_name.strip(), attribute.strip()
    parts = module_name.split(".")
    if not attribute.isidentifier() or not all(part.isidentifier() for part in parts):
        raise TrainableReferenceError(
            f"trainable {reference!r} is not an import path: write it as package.module:NAME "
            "(for a models.py beside the spec: models:NAME)"
        )
    folders = [str(Path(folder).resolve()) for folder in search_path]
    for folder in reversed(folders):
        if folder not in sys.path:
            sys.path.insert(0, folder)  # kept: the driver unpickles results that name it
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is not None and module_name.startswith(error.name):
            where = f"{', '.join(folders)} or " if folders else ""
            raise TrainableReferenceError(
                f"trainable {reference!r}: no module {module_name!r} in {where}sys.path; "
                "put it beside the spec or install its package"
            ) from None
        raise _import_failed(reference, module_name, error) from None
    except Exception as error:  # the user's module raised while being imported
        raise _import_failed(reference, module_name, error) from None
    if not hasattr(module, attribute):
        found = _definitions_in(module)
        hint = f"; it defines the trainables {', '.join(found)}" if found else ""
        raise TrainableReferenceError(
            f"trainable {reference!r}: module {module_name!r} has no {attribute!r}{hint}"
        )
    return _checked(reference, getattr(module, attribute))


def entry_point_trainable(name: str) -> TrainableDefinition | None:
    """The trainable an installed package declares under ``name``, or None."""
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry.name == name:
            try:
                value = entry.load()
            except Exception as error:
                raise TrainableReferenceError(
                    f"trainable {name!r}: the entry point {entry.value!r} of "
                    f"{ENTRY_POINT_GROUP!r} failed to load: {type(error).__name__}: {error}"
                ) from None
            return _checked(name, value)
    return None


def _checked(reference: str, value: Any) -> TrainableDefinition:
    from trainables.registry import TrainableDefinition

    if not isinstance(value, TrainableDefinition):
        raise TrainableReferenceError(
            f"trainable {reference!r} is a {type(value).__name__}, not a TrainableDefinition "
            f"(a config model, its metrics and a session factory: {HOW_TO})"
        )
    return value


def _definitions_in(module: Any) -> list[str]:
    from trainables.registry import TrainableDefinition

    return sorted(k for k, v in vars(module).items() if isinstance(v, TrainableDefinition))


def _import_failed(
    reference: str, module_name: str, error: BaseException
) -> TrainableReferenceError:
    return TrainableReferenceError(
        f"trainable {reference!r}: importing {module_name!r} failed: "
        f"{type(error).__name__}: {error}"
    )
