"""A panda session's report is named and titled like the rest of caviar: ``report.html`` (as a
sweep's, as the README says) and the session as its summary names it, "panda" said once."""

from __future__ import annotations

from pathlib import Path

from orchestrator.report.panda_chart import session_title, write_panda_report
from orchestrator.store.panda_runs import PandaHistory, SegmentRun

SESSION = "20261204-025711-9c29e6"


def _history(spec_name: str = "digits-panda") -> PandaHistory:
    def segment(index: int, parent: int | None, start: int) -> SegmentRun:
        curve = [(e, 1.0 / e) for e in range(start + 1, start + 4)]
        return SegmentRun(
            index, f"run{index}", parent, start, "adjust" if parent is not None else "start",
            "user", "{}", "", {}, {"val_loss": curve},
        )  # fmt: skip

    return PandaHistory(
        run_id="0dc629ffbabb4f4b8d7d76c145c3aa22",
        experiment=spec_name,
        experiment_id="1",
        tracking_uri="sqlite:///mlflow.db",
        name=f"{spec_name}-panda-{SESSION}",  # the parent run's name, as caviar panda sets it
        metric="val_loss",
        mode="min",
        tags={"caviar.kind": "panda", "caviar.sweep_id": SESSION},
        metrics={},
        segments=[segment(0, None, 0), segment(1, 0, 2)],
    )


def test_the_session_is_titled_as_its_summary_names_it() -> None:
    assert session_title(_history()) == f"panda session digits-panda ({SESSION})"
    assert session_title(_history("wine")) == f"panda session wine ({SESSION})"


def test_the_page_is_report_html_titled_once(tmp_path: Path) -> None:
    page = write_panda_report(_history(), tmp_path / "report", ("val_loss",))
    assert page == tmp_path / "report" / "report.html"
    text = page.read_text(encoding="utf-8")
    assert f"<title>panda session digits-panda ({SESSION})</title>" in text
    assert "panda-panda" not in text
    assert (tmp_path / "report" / "panda_branches.png").stat().st_size > 1000
