"""``caviar report``: resolve the store and the sweep, then write the report."""

from __future__ import annotations

import os
from pathlib import Path

from orchestrator.report import write_report
from orchestrator.spec import DEFAULT_TRACKING_URI
from orchestrator.tracking import read_sweep, ui_base


def report_command(sweep: str, tracking_uri: str | None, out: Path | None) -> Path:
    """Write the report of ``sweep`` (experiment name or parent run id); returns the HTML page."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    history = read_sweep(uri, sweep)
    folder = out or Path(f"caviar_report_{history.name}")
    report = write_report(history, folder, ui_base(history.tracking_uri))
    return next(p for p in report.files if p.suffix == ".html")
