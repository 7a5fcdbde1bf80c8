"""A new SQLite store seeded from the migrated template is the store MLflow would have made.

Real MLflow on real SQLite files: the schema MLflow's own migrations produce is compared with
the seeded one, table by table and index by index.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from mlflow import MlflowClient

from orchestrator.store.sqlite_seed import seed_new_sqlite_store, template_path
from orchestrator.store.tracking import SweepTracker
from orchestrator.store.uri import sqlite_path


def _schema(db: Path) -> list[tuple[str, str, list[str]]]:
    """Every table and index with its definition's clauses, sorted: MLflow's migrations do not
    write a table's constraints in the same order from one run to the next."""
    with sqlite3.connect(db) as connection:
        rows = connection.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' "
            "ORDER BY type, name"
        ).fetchall()
    return [
        (kind, name, sorted(line.strip(" ,\t") for line in (sql or "").splitlines()))
        for kind, name, sql in rows
    ]


def _revision(db: Path) -> list[tuple[str]]:
    with sqlite3.connect(db) as connection:
        return connection.execute("SELECT version_num FROM alembic_version").fetchall()


def _experiments(db: Path) -> list[tuple[int, str, str]]:
    with sqlite3.connect(db) as connection:
        return connection.execute(
            "SELECT experiment_id, name, artifact_location FROM experiments ORDER BY 1"
        ).fetchall()


def test_a_seeded_store_has_the_schema_mlflow_migrates_to(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    migrated, seeded = tmp_path / "migrated.db", tmp_path / "seeded.db"
    MlflowClient(tracking_uri=f"sqlite:///{migrated}").search_experiments()  # MLflow's own way

    assert seed_new_sqlite_store(f"sqlite:///{seeded}") is True
    MlflowClient(tracking_uri=f"sqlite:///{seeded}").search_experiments()

    assert len(_schema(migrated)) > 20
    assert _schema(seeded) == _schema(migrated)
    assert _revision(seeded) == _revision(migrated)
    # The Default experiment is MLflow's, made when it opened the copy: it points into the new
    # store's working folder, not into the cache where the template was built.
    assert _experiments(seeded) == [(0, "Default", str(tmp_path / "mlruns" / "0"))]


def test_a_seeded_store_takes_a_sweep_and_reads_back(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tracker = SweepTracker("sqlite:///mlflow.db", "seeded")
    parent = tracker.start_sweep("p", {"caviar.kind": "sweep"}, {"a": 1}, "name: x\n", "s.yaml")
    tracker.trial_started("0", "trial-0", {"lr": 0.1}, {"caviar.trial_index": "0"})
    tracker.trial_metrics("0", {"val_accuracy": 0.5}, step=1)
    tracker.trial_ended("0", {"caviar.outcome": "completed"}, "FINISHED")
    tracker.close()
    tracker.end_sweep("FINISHED")

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.get_run(parent).info.status == "FINISHED"
    child = client.get_run(tracker.child_run_id("0"))
    assert child.data.metrics == {"val_accuracy": 0.5}
    assert child.data.params == {"lr": "0.1"}


def test_the_template_is_built_once_and_reused(tmp_path):
    seed_new_sqlite_store(f"sqlite:///{tmp_path / 'a.db'}")
    built = template_path().stat().st_mtime_ns
    assert seed_new_sqlite_store(f"sqlite:///{tmp_path / 'b.db'}") is True
    assert template_path().stat().st_mtime_ns == built
    assert (tmp_path / "b.db").read_bytes() == template_path().read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.db", "b.db"]  # no staging left


def test_an_existing_file_is_never_replaced(tmp_path):
    store = tmp_path / "mlflow.db"
    store.write_bytes(b"not yours to replace")
    assert seed_new_sqlite_store(f"sqlite:///{store}") is False
    assert store.read_bytes() == b"not yours to replace"


def test_without_a_usable_cache_mlflow_creates_the_store_itself(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where the cache folder would go")
    monkeypatch.setenv("CAVIAR_CACHE_DIR", str(blocker / "cache"))
    monkeypatch.chdir(tmp_path)

    assert seed_new_sqlite_store("sqlite:///mlflow.db") is False
    assert not (tmp_path / "mlflow.db").exists()
    tracker = SweepTracker("sqlite:///mlflow.db", "unseeded")  # migrated by MLflow instead
    assert tracker.experiment_id != "0"
    assert _revision(tmp_path / "mlflow.db")


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("sqlite:///mlflow.db", Path("mlflow.db")),
        ("sqlite:////abs/m.db", Path("/abs/m.db")),
        ("sqlite:///m.db?timeout=5", Path("m.db")),
        ("sqlite:///:memory:", None),
        ("sqlite://", None),
        ("http://127.0.0.1:5000", None),
        ("postgresql://u@h/db", None),
    ],
)
def test_only_sqlite_files_are_seeded(uri, expected):
    assert sqlite_path(uri) == expected
