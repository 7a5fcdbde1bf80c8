"""Opening a database store once, so that the experiments this process creates keep their
artifacts where the tracking server beside it keeps them.

``caviar up``'s driver writes a sweep straight into the store its MLflow server serves (a
SQLite file on this machine) instead of through the server's HTTP API: the same runs in the
same store, without the server's per-request work competing with the trials for the cores
(docs/performance.md). MLflow gives a database store the artifact root ``./mlruns`` of the
folder where the process first opens it, and keeps that store for the life of the process;
the driver opens it once from the folder whose ``mlruns`` the server was given as its
``--default-artifact-root``, so both put every experiment's artifacts in the same place.
"""

from __future__ import annotations

import os
from pathlib import Path

ARTIFACTS = "mlruns"  # MLflow's default artifact root, relative to where the store is opened


def open_store(uri: str, folder: Path) -> None:
    """Open (and keep, in this process) the store ``uri`` from ``folder``."""
    from mlflow import MlflowClient

    before = os.getcwd()
    os.chdir(folder)
    try:
        MlflowClient(uri).search_experiments(max_results=1)
    finally:
        os.chdir(before)
