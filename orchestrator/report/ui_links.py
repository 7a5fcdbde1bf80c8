"""Direct links into the MLflow UI: a sweep's runs table and a compare view of its best trials.

MLflow 3.x opens an experiment on its GenAI pages (traces overview); these links skip that.
The routes are the UI's own (``mlflow/server/js`` ``routes.tsx``, hash routing):

* runs table:   ``<ui>/#/experiments/<experiment id>/runs``
* one run:      ``<ui>/#/experiments/<experiment id>/runs/<run id>``
* compare view: ``<ui>/#/compare-runs?runs=<JSON list of run ids>&experiments=<JSON list>``

The compare route's query values are JSON (``JSON.stringify`` in the UI's own links); here
they are percent-encoded, which the UI decodes before parsing, so a terminal keeps the whole
link clickable. Pure string building: no MLflow import, no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

# The links' base: one function for the store's printed address and the report's links, so a
# link never carries the credentials a tracking URI may hold (re-exported from here).
from orchestrator.store.uri import ui_base

__all__ = [
    "LABEL_WIDTH",
    "TOP_TRIALS_COMPARED",
    "SweepLinks",
    "compare_page",
    "labelled",
    "labelled_line",
    "run_page",
    "runs_page",
    "sweep_links",
    "text_lines",
    "ui_base",
]

TOP_TRIALS_COMPARED = 5  # how many of the best trials a compare link shows
LABEL_WIDTH = 17  # "<label>: " padded to this, so the terminal's links line up in one column


@dataclass(frozen=True)
class SweepLinks:
    """The links a user needs first: the runs table, and the best trials side by side
    (``compare``, given two or more ranked trials) or else the one best run (``best``)."""

    runs: str
    compare: str | None
    best: str | None
    compared: int  # how many runs the compare link holds (0 without one)


def runs_page(base: str, experiment_id: str) -> str:
    """The experiment's runs table (the classic view: one row per trial)."""
    return f"{_root(base)}/experiments/{quote(str(experiment_id), safe='')}/runs"


def run_page(base: str, experiment_id: str, run_id: str) -> str:
    """One run's page (parameters, metrics, artifacts)."""
    return f"{runs_page(base, experiment_id)}/{quote(run_id, safe='')}"


def compare_page(base: str, experiment_id: str, run_ids: Sequence[str]) -> str:
    """The UI's compare view of ``run_ids``, in the order given (best first)."""
    runs = _json_param(list(run_ids))
    experiments = _json_param([str(experiment_id)])
    return f"{_root(base)}/compare-runs?runs={runs}&experiments={experiments}"


def sweep_links(
    base: str,
    experiment_id: str,
    ranked_run_ids: Sequence[str],
    limit: int = TOP_TRIALS_COMPARED,
) -> SweepLinks:
    """The runs table and a compare view of the first ``limit`` of ``ranked_run_ids``."""
    top = list(ranked_run_ids)[:limit]
    if len(top) >= 2:
        compare, best = compare_page(base, experiment_id, top), None
    else:
        compare, best = None, (run_page(base, experiment_id, top[0]) if top else None)
    return SweepLinks(
        runs=runs_page(base, experiment_id),
        compare=compare,
        best=best,
        compared=len(top) if compare else 0,
    )


def _root(base: str) -> str:
    return f"{base.rstrip('/')}/#"


def _json_param(value: list[str]) -> str:
    return quote(json.dumps(value, separators=(",", ":")), safe="")


def labelled(links: SweepLinks) -> list[tuple[str, str]]:
    """``(label, url)`` pairs in the order a user wants them, for terminal and HTML alike."""
    pairs = [("runs table", links.runs)]
    if links.compare is not None:
        pairs.append((f"best {links.compared} compared", links.compare))
    if links.best is not None:
        pairs.append(("best run", links.best))
    return pairs


def text_lines(links: SweepLinks, indent: str = "") -> list[str]:
    """The links as terminal lines, ``<label>:`` padded to ``LABEL_WIDTH``."""
    return [labelled_line(label, url, indent) for label, url in labelled(links)]


def labelled_line(label: str, value: str, indent: str = "") -> str:
    return f"{indent}{label + ':':<{LABEL_WIDTH}}{value}"
