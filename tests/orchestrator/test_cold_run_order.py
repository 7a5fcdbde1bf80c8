"""A cold ``caviar run`` (no service) prints its summary before it draws the report's plots,
as the service's driver does: the plots reach the parent run after the user has the answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestrator import cli
from orchestrator.engine import raystart
from orchestrator.sweep_result import SweepResult
from orchestrator.trials import Trial, TrialState

SPEC = """\
name: order
data: {source: iris}
space:
  learning_rate: {scale: log, low: 0.01, high: 0.5}
search: {num_trials: 2, seed: 0}
scheduler: {kind: fifo, max_epochs: 1}
"""


def test_the_summary_is_printed_before_the_plots_are_drawn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from orchestrator.engine import run as engine_run
    from orchestrator.report import summary

    (tmp_path / "spec.yaml").write_text(SPEC)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(raystart, "start_in_background", lambda *args, **kwargs: None)
    drawn: list[str] = []  # what the terminal showed when the plots were drawn

    def sweep(*args: Any, **kwargs: Any) -> SweepResult:
        assert kwargs["draw_later"] is True  # the plots are left to the command
        best = Trial(index=0, config={}, state=TrialState.COMPLETED)
        result = SweepResult(
            name="order", sweep_id="id", experiment="order", tracking_uri="sqlite:///m.db",
            parent_run_id="p", storage_dir=tmp_path, experiment_id="1",
            metric="val_accuracy", mode="max", records=[best], wall_seconds=1.0, best=best,
        )  # fmt: skip
        result.draw_report = lambda *_: drawn.append(capsys.readouterr().out)
        return result

    monkeypatch.setattr(engine_run, "run_sweep", sweep)
    monkeypatch.setattr(summary, "format_summary", lambda result: "THE SUMMARY")
    assert cli.main(["run", "spec.yaml", "--no-service"]) == 0
    assert drawn == ["THE SUMMARY\n"]  # printed, and only then the plots
