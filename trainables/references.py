"""Finding a trainable a spec names by import path or entry point, with one clear error each way.

``package.module:NAME`` is imported with the given folders (the spec's) first on ``sys.path``,
so a ``models.py`` beside the spec is found on the driver and, given the same folders, on every
trial worker. A bare name that is not registered is looked up among the ``caviar.trainables``
entry points of installed packages. Either way the result must be a
:class:`~trainables.registry.TrainableDefinition`.

One process may look up many specs' trainables (``caviar up``'s warm driver runs sweep after
sweep): a module found in a spec's folder is therefore known by its file and that file's
content, not by its name alone. When ``sys.modules`` holds another folder's module of the same
name (two projects each with a ``models.py``), or an older content of the same file (the user
edited it), that copy is dropped and the module imported afresh, so the driver validates and
scores with the code its trial workers import.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
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
    # sys.path is the process's, and these additions are permanent on purpose: the module
    # imported here is named by what the process later unpickles (Tune's results and
    # checkpoints on the driver, the trainable an actor is handed) and may import more of its
    # folder lazily, long after this call; removing the folder again would break those
    # imports in the middle of a sweep. Invariant: each folder appears once, and the folders
    # of the latest lookup come first, so a later spec's folder wins over an earlier one's.
    # The path grows by one entry per distinct spec folder a process has seen.
    for folder in reversed(folders):
        # First, also when an earlier spec put it further back: this spec's folder wins.
        while folder in sys.path:
            sys.path.remove(folder)
        sys.path.insert(0, folder)
    chain = _modules_in(module_name, folders)
    identities = _forget_stale(chain)
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
    _remember(identities)
    if not hasattr(module, attribute):
        found = _definitions_in(module)
        hint = f"; it defines the trainables {', '.join(found)}" if found else ""
        raise TrainableReferenceError(
            f"trainable {reference!r}: module {module_name!r} has no {attribute!r}{hint}"
        )
    return _checked(reference, getattr(module, attribute))


# --- user modules, by file and content -----------------------------------------------------

# For each module imported from a spec's folder: the file it was imported from and a digest
# of that file's content then. Invariant: an entry describes the module object that is in
# sys.modules under that name, or sys.modules holds none. Process-wide because sys.modules,
# which it annotates, is.
_LOADED: dict[str, tuple[str | None, str]] = {}


def _modules_in(module_name: str, folders: Sequence[str]) -> list[tuple[str, str | None]]:
    """``(name, file)`` of ``module_name`` and its parent packages, as found in ``folders``
    (not in the rest of sys.path: installed code is not the user's to edit between sweeps);
    empty when the top-level package is not in one of them. Nothing is imported."""
    chain: list[tuple[str, str | None]] = []
    locations: Sequence[str] | None = list(folders)
    parts = module_name.split(".")
    for depth in range(1, len(parts) + 1):
        if not locations:
            break
        name = ".".join(parts[:depth])
        spec = importlib.machinery.PathFinder.find_spec(name, list(locations))
        if spec is None:
            break
        chain.append((name, spec.origin if spec.has_location else None))  # None: namespace
        search = spec.submodule_search_locations
        locations = list(search) if search is not None else None
    return chain


def _identity(path: str | None) -> tuple[str | None, str]:
    if path is None:
        return None, ""
    try:
        return path, hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return path, ""


def _forget_stale(
    chain: Sequence[tuple[str, str | None]],
) -> dict[str, tuple[str | None, str]]:
    """Drop from sys.modules each module of ``chain`` (and what is below it) whose loaded copy
    is another file, or the same file with other content, than the folders now hold; returns
    each module's file and content digest as read now (before the import that follows, so an
    edit made meanwhile is seen by the next lookup)."""
    identities = {name: _identity(path) for name, path in chain}
    dropped = False
    for name, path in chain:
        loaded = sys.modules.get(name)
        if loaded is None:
            continue
        now = identities[name]
        recorded = _LOADED.get(name)
        same_file = getattr(loaded, "__file__", None) == path
        if same_file and (recorded is None or recorded == now):
            # Imported by someone else, or by us with this content: it is the current code.
            _LOADED[name] = now
            continue
        for stale in [n for n in sys.modules if n == name or n.startswith(name + ".")]:
            del sys.modules[stale]
            _LOADED.pop(stale, None)
        dropped = True
    if dropped:
        importlib.invalidate_caches()  # the folders' listings may have changed too
    return identities


def _remember(identities: dict[str, tuple[str | None, str]]) -> None:
    """After the import: what each module of the chain in sys.modules was read from."""
    for name, (path, digest) in identities.items():
        loaded = sys.modules.get(name)
        if loaded is not None and getattr(loaded, "__file__", None) == path:
            _LOADED[name] = (path, digest)


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
