"""Which caviar a process runs: its version and a hash of its code.

``caviar up`` serves every ``caviar run`` of its user, so without this a service started from
one checkout ran the sweeps of another (``make test`` in a second checkout sent its integration
sweeps to it), and a service started before a ``git pull`` or an upgrade ran the user's sweep
on the code of before. The driver computes its identity once, before it imports the sweep's
modules, and answers it to every ping; ``caviar run`` computes its own and uses the service
only when the two are equal (``client.choose``). ``caviar up`` records it in the state folder.

The hash covers every ``.py`` file of the ``orchestrator`` and ``trainables`` packages (what
the driver and its trial workers import), by path inside the package and content: about a
hundred files, 15 ms, paid by ``caviar run`` only while a service is up. Nothing is imported:
the packages are found by ``importlib.util.find_spec``, the client stays light.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from pathlib import Path

PACKAGES = ("orchestrator", "trainables")
DISTRIBUTION = "caviar"


@functools.lru_cache(maxsize=1)
def code_identity() -> dict[str, str]:
    """``{"version": ..., "code": ...}`` of the caviar this process runs; computed once."""
    return {"version": _version(), "code": code_hash()}


def code_hash(roots: dict[str, Path] | None = None) -> str:
    """A digest of the packages' source files (``roots``: package name to folder; default,
    where this process imports them from)."""
    roots = roots if roots is not None else _package_roots()
    digest = hashlib.sha256()
    for package in sorted(roots):
        root = roots[package]
        for path in sorted(root.rglob("*.py"), key=lambda p: p.relative_to(root).as_posix()):
            digest.update(f"{package}/{path.relative_to(root).as_posix()}\0".encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


def describe(identity: object) -> str:
    """``version 0.1.0, code 1a2b3c4d5e6f7a8b`` (what a driver too old to say is, too)."""
    if not isinstance(identity, dict):
        return "unknown version and code"
    return f"version {identity.get('version', '?')}, code {identity.get('code', '?')}"


def _package_roots() -> dict[str, Path]:
    roots = {}
    for package in PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            roots[package] = Path(next(iter(spec.submodule_search_locations)))
    return roots


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"
