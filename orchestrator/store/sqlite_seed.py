"""A new SQLite tracking store, copied from an empty one already migrated, not migrated anew.

MLflow creates a SQLite store by running its whole chain of schema migrations (dozens of
alembic revisions, each rebuilding tables): seconds of driver CPU (docs/performance.md) at
the start of every sweep in a new folder, on cores shared with Ray's start and the first
trials. For one MLflow release the outcome is always the same empty schema, so caviar
migrates once per release into a per-user cache and copies that file wherever a new store is
needed.

What is copied is exactly what MLflow's own migrations produce (a test compares the schemas),
minus the ``Default`` experiment: its artifact location would name the cache's folder, so it
is removed, and MLflow creates it again, with the right location, when it first opens the copy.
A copy never replaces a file: a store that exists is left to MLflow. Anything that goes wrong
here (no cache folder, a read-only disk, an MLflow that changed its internals) only costs the
time this module saves: MLflow then creates the store itself, as it always did.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

from orchestrator import speedups
from orchestrator.store.uri import sqlite_path

log = logging.getLogger(__name__)

CACHE_ENV = "CAVIAR_CACHE_DIR"
_SQLITE_PREFIX = "sqlite:///"


def seed_new_sqlite_store(uri: str) -> bool:
    """Create the SQLite store ``uri`` names from the migrated template, if it does not exist.

    True when it was created here; False for any other store (not SQLite, already there,
    in memory), with speed-ups off (``CAVIAR_NO_SPEEDUPS``), and whenever seeding failed, in
    which case MLflow creates it as before.
    """
    if not speedups.enabled():
        return False
    path = sqlite_path(uri)
    if path is None or path.exists():
        return False
    try:
        template = _template()
        path.parent.mkdir(parents=True, exist_ok=True)
        return _copy_without_replacing(template, path)
    except Exception as error:  # only the speed-up is lost; MLflow migrates instead
        log.debug("caviar: could not seed %s from a template (%s)", path, error)
        return False


def cache_dir() -> Path:
    """``$CAVIAR_CACHE_DIR``, else ``$XDG_CACHE_HOME/caviar``, else ``~/.cache/caviar``."""
    given = os.environ.get(CACHE_ENV)
    if given:
        return Path(given).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "caviar"


def template_path() -> Path:
    """Where this MLflow release's template lives; its name changes with the migrations."""
    import mlflow

    versions = Path(mlflow.__file__).parent / "store" / "db_migrations" / "versions"
    revisions = sorted(p.name for p in versions.glob("*.py"))
    digest = hashlib.sha256("\n".join(revisions).encode()).hexdigest()[:12]
    return cache_dir() / f"mlflow-{mlflow.__version__}-{digest}.sqlite"


def _template() -> Path:
    """This release's template, built on first use (by the first sweep that needs it)."""
    template = template_path()
    if template.is_file():
        return template
    template.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".building-", suffix=".sqlite", dir=template.parent)
    os.close(fd)
    building = Path(name)
    try:
        building.unlink()  # SQLite creates it; an empty file would look like a store
        _migrate_empty(building)
        os.replace(building, template)  # atomic: a concurrent build wins or loses whole
    finally:
        with contextlib.suppress(FileNotFoundError):
            building.unlink()
    return template


def _migrate_empty(path: Path) -> None:
    """MLflow's own table creation and migrations, then the ``Default`` experiment removed."""
    import sqlalchemy
    from mlflow.store.db.utils import _initialize_tables, _verify_schema

    engine = sqlalchemy.create_engine(f"{_SQLITE_PREFIX}{path}")
    try:
        _initialize_tables(engine)
        _verify_schema(engine)  # at MLflow's head revision, or this raises
    finally:
        engine.dispose()
    with contextlib.closing(sqlite3.connect(path)) as connection, connection:
        connection.execute("DELETE FROM experiment_tags WHERE experiment_id = 0")
        connection.execute("DELETE FROM experiments WHERE experiment_id = 0")


def _copy_without_replacing(template: Path, path: Path) -> bool:
    """Copy next to ``path``, then hard-link into place: the store appears whole or not at
    all, and a file someone created meanwhile is never replaced (False then)."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".seeding", dir=path.parent)
    os.close(fd)
    staging = Path(name)
    try:
        shutil.copyfile(template, staging)
        try:
            os.link(staging, path)
        except FileExistsError:
            return False
        return True
    finally:
        staging.unlink()
