"""``caviar report``: resolve the store and the sweep, then write the report."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TextIO

from orchestrator.report.page import ui_links, write_report
from orchestrator.report.ui_links import labelled_line, text_lines, ui_base
from orchestrator.store.panda_runs import is_panda_run
from orchestrator.store.reader import RUN_ID_PATTERN
from orchestrator.store.tracking import read_sweep, ui_command
from orchestrator.store.uri import tracking_uri as default_or


def report_command(
    sweep: str, tracking_uri: str | None, out: Path | None, stream: TextIO | None = None
) -> Path:
    """Write the report of ``sweep`` (experiment name or parent run id); returns the HTML page.

    Prints (to ``stream``, default stdout) how to open the MLflow UI and the direct links to
    the sweep's runs table and its best trials compared, the same links the page carries.
    """
    stream = stream or sys.stdout
    uri = default_or(tracking_uri)
    if re.fullmatch(RUN_ID_PATTERN, sweep) and is_panda_run(sweep, uri):
        return _panda_report(sweep, uri, out, stream)
    history = read_sweep(uri, sweep, announce=stream)
    folder = out or Path(f"caviar_report_{history.name}")
    command = ui_command(history.tracking_uri)
    base = ui_base(history.tracking_uri, command)
    report = write_report(history, folder, base, command)
    lines = [labelled_line("open the UI", command), *text_lines(ui_links(history, base))]
    print("\n".join(lines), file=stream)
    return next(p for p in report.files if p.suffix == ".html")


PANDA_METRICS = ("val_loss", "train_loss")  # charted under the objective when logged


def _panda_report(run_id: str, uri: str, out: Path | None, stream: TextIO) -> Path:
    """A panda session: every branch's curves on one chart, with its changes marked."""
    from orchestrator.report.panda_chart import write_panda_report
    from orchestrator.store.panda_runs import read_panda

    history = read_panda(run_id, uri, PANDA_METRICS)
    metrics = tuple(
        m
        for m in dict.fromkeys((history.metric, *PANDA_METRICS))
        if any(s.curves.get(m) for s in history.segments)
    )
    folder = out or Path(f"caviar_report_{history.experiment}")
    page = write_panda_report(history, folder, metrics or (history.metric,))
    print(labelled_line("open the UI", ui_command(history.tracking_uri)), file=stream)
    return page
