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
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

TOP_TRIALS_COMPARED = 5  # how many of the best trials a compare link shows
MLFLOW_UI_DEFAULT_HOST = "127.0.0.1"  # `mlflow ui` without --host
MLFLOW_UI_DEFAULT_PORT = 5000  # `mlflow ui` without --port
LABEL_WIDTH = 17  # "<label>: " padded to this, so the terminal's links line up in one column
_ANY_ADDRESS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": MLFLOW_UI_DEFAULT_HOST}


@dataclass(frozen=True)
class SweepLinks:
    """The links a user needs first: the runs table, and the best trials side by side
    (``compare``, given two or more ranked trials) or else the one best run (``best``)."""

    runs: str
    compare: str | None
    best: str | None
    compared: int  # how many runs the compare link holds (0 without one)


def ui_base(tracking_uri: str, ui_command: str) -> str:
    """The address the MLflow UI for this store answers at, without a trailing slash.

    An http(s) tracking URI is the UI itself (path kept, for a server behind a prefix; any
    credentials, query or fragment dropped). Any other store is served by the printed
    ``ui_command`` (``mlflow ui ... --host H --port P``), so its host and port are read
    from that command: the link and the command cannot disagree.
    """
    if tracking_uri.startswith(("http://", "https://")):
        parts = urlsplit(tracking_uri)
        netloc = parts.netloc.rpartition("@")[2]  # never print credentials in a link
        return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    host, port = _host_and_port(ui_command)
    host = _ANY_ADDRESS.get(host, host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 literal
    return f"http://{host}:{port}"


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


def _host_and_port(command: str) -> tuple[str, int]:
    """``--host``/``--port`` (``-h``/``-p``, ``--opt=value`` too) of an ``mlflow ui`` command."""
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    options: dict[str, str] = {}
    for i, word in enumerate(words):
        name, equals, value = word.partition("=")
        if name in ("--host", "-h", "--port", "-p"):
            if not equals:
                value = words[i + 1] if i + 1 < len(words) else ""
            options[name.lstrip("-")[0]] = value
    host = options.get("h", MLFLOW_UI_DEFAULT_HOST)
    try:
        port = int(options.get("p", MLFLOW_UI_DEFAULT_PORT))
    except ValueError:
        port = MLFLOW_UI_DEFAULT_PORT
    return host, port


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
