"""Read a SQLite MLflow store while a sweep writes it: cheap enough to poll, never blocking."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any


def query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` on a read-only connection; none while the file is absent or locked."""
    if not db.exists():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            return conn.execute(sql).fetchall()
    except sqlite3.Error:
        return []
