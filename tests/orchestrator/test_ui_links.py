"""Direct links into the MLflow UI: the routes MLflow 3.17's UI serves, built from the store."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from conftest import run_caviar

from orchestrator.report.ui_links import (
    compare_page,
    run_page,
    runs_page,
    sweep_links,
    text_lines,
    ui_base,
)

RUN_A = "0123456789abcdef0123456789abcdef"
RUN_B = "fedcba9876543210fedcba9876543210"
RUN_C = "aaaaaaaaaaaaaaaabbbbbbbbbbbbbbbb"
SQLITE = "sqlite:////tmp/x/mlflow.db"


def _compare_query(url: str) -> dict[str, list[str]]:
    """What the UI reads: the hash route's query, decoded, each value parsed as JSON."""
    route = urlsplit(url).fragment  # "/compare-runs?runs=...&experiments=..."
    path, _, query = route.partition("?")
    assert path == "/compare-runs"
    return {k: json.loads(v[0]) for k, v in parse_qs(query, strict_parsing=True).items()}


def test_runs_page_is_the_experiments_runs_tab() -> None:
    assert runs_page("http://127.0.0.1:5000", "7") == "http://127.0.0.1:5000/#/experiments/7/runs"


def test_run_page_is_the_run_under_its_experiment() -> None:
    assert run_page("http://h:5000", "7", RUN_A) == f"http://h:5000/#/experiments/7/runs/{RUN_A}"


def test_compare_page_holds_the_runs_in_order_and_the_experiment() -> None:
    url = compare_page("http://127.0.0.1:5000", "12", [RUN_B, RUN_A, RUN_C])
    assert url.startswith("http://127.0.0.1:5000/#/compare-runs?runs=")
    assert _compare_query(url) == {"runs": [RUN_B, RUN_A, RUN_C], "experiments": ["12"]}


def test_compare_page_percent_encodes_its_json() -> None:
    url = compare_page("http://h", "3", [RUN_A, RUN_B])
    query = url.split("?", 1)[1]
    # Nothing a terminal or a browser would cut a link at: no quotes, brackets, commas, spaces.
    for character in '"[], ':
        assert character not in query
    assert query == (f"runs=%5B%22{RUN_A}%22%2C%22{RUN_B}%22%5D&experiments=%5B%223%22%5D")
    # The UI decodes the search string and JSON.parse's each value: what MLflow's own
    # getCompareRunPageRoute writes (JSON.stringify, no spaces), once decoded.
    assert unquote(query) == f'runs=["{RUN_A}","{RUN_B}"]&experiments=["3"]'


@pytest.mark.parametrize(
    ("uri", "base"),
    [
        ("http://mlflow.example:5000", "http://mlflow.example:5000"),
        ("http://mlflow.example:5000/", "http://mlflow.example:5000"),
        ("https://example.org/mlflow/", "https://example.org/mlflow"),
        ("https://example.org/team/mlflow", "https://example.org/team/mlflow"),
        ("http://user:secret@example.org:8080/", "http://example.org:8080"),
    ],
)
def test_an_http_store_is_its_own_ui(uri: str, base: str) -> None:
    assert ui_base(uri, uri) == base


def test_links_under_a_path_prefix_keep_it_once() -> None:
    base = ui_base("https://example.org/mlflow/", "https://example.org/mlflow/")
    assert runs_page(base, "4") == "https://example.org/mlflow/#/experiments/4/runs"
    assert compare_page(base, "4", [RUN_A]).startswith(
        "https://example.org/mlflow/#/compare-runs?runs="
    )


@pytest.mark.parametrize(
    ("command", "base"),
    [
        (
            f"mlflow ui --backend-store-uri {SQLITE} --host 127.0.0.1 --port 5000",
            "http://127.0.0.1:5000",
        ),
        (
            f"mlflow ui --backend-store-uri {SQLITE} --host 127.0.0.1 --port 8123",
            "http://127.0.0.1:8123",
        ),
        (
            f"mlflow ui --backend-store-uri {SQLITE} --port=8124 --host=localhost",
            "http://localhost:8124",
        ),
        (f"mlflow ui --backend-store-uri {SQLITE} -h 0.0.0.0 -p 6000", "http://127.0.0.1:6000"),
        (f"mlflow ui --backend-store-uri {SQLITE} --host :: --port 5001", "http://[::1]:5001"),
        (f"mlflow ui --backend-store-uri {SQLITE}", "http://127.0.0.1:5000"),
    ],
)
def test_a_sqlite_store_is_served_where_the_ui_command_says(command: str, base: str) -> None:
    assert ui_base(SQLITE, command) == base


def test_the_printed_ui_command_and_the_links_agree() -> None:
    """Whatever host and port tracking.ui_command prints, the links point there."""
    from orchestrator.store.tracking import ui_command

    command = ui_command(SQLITE)
    base = ui_base(SQLITE, command)
    host_port = base.removeprefix("http://")
    host, port = host_port.rsplit(":", 1)
    assert f"--host {host}" in command and f"--port {port}" in command
    http = "http://mlflow.internal:5000/"
    assert ui_base(http, ui_command(http)) == "http://mlflow.internal:5000"


@pytest.mark.parametrize(
    ("uri", "printed"),
    [
        ("http://mlflow.internal:5000/", "http://mlflow.internal:5000"),
        ("https://example.org/team/mlflow/", "https://example.org/team/mlflow"),
        ("http://user:secret@example.org:8080/", "http://example.org:8080"),
    ],
)
def test_a_tracking_server_is_printed_as_its_address(uri: str, printed: str) -> None:
    """The 'open the UI' line is the address itself, on every system (macOS's `open` is not
    Linux's), and never the credentials a tracking URI may carry."""
    from orchestrator.store.tracking import ui_base as store_ui_base
    from orchestrator.store.tracking import ui_command

    assert ui_command(uri) == printed
    assert store_ui_base(uri) == printed  # the links' base: the same address


def test_sweep_links_compare_the_best_five_in_ranking_order() -> None:
    ranked = [f"{i:032x}" for i in range(8)]
    links = sweep_links("http://h:1", "9", ranked)
    assert links.runs == "http://h:1/#/experiments/9/runs"
    assert links.compare is not None and links.best is None and links.compared == 5
    assert _compare_query(links.compare) == {"runs": ranked[:5], "experiments": ["9"]}


def test_one_ranked_trial_links_its_run_and_none_links_only_the_table() -> None:
    one = sweep_links("http://h:1", "9", [RUN_A])
    assert one.compare is None and one.best == f"http://h:1/#/experiments/9/runs/{RUN_A}"
    none = sweep_links("http://h:1", "9", [])
    assert none.compare is None and none.best is None
    assert text_lines(none) == ["runs table:      http://h:1/#/experiments/9/runs"]


def test_text_lines_label_each_link_in_one_column() -> None:
    lines = text_lines(sweep_links("http://h:1", "9", [RUN_A, RUN_B]), indent="  ")
    assert lines[0] == "  runs table:      http://h:1/#/experiments/9/runs"
    assert lines[1].startswith("  best 2 compared: http://h:1/#/compare-runs?runs=%5B")
    assert len(lines) == 2


# --- `caviar report` on a small fixed store ----------------------------------------------------

# (index, outcome, val_accuracy per epoch). ASHA rungs at epochs 1, 2 and 4: the rank is the
# deepest rung reached, then the value there, so it is neither index nor value order.
TRIALS = [
    (0, "stopped_early", [0.99]),  # best value of all, but shallowest rung: ranks 5th
    (1, "completed", [0.5, 0.6, 0.7, 0.80]),  # 3rd
    (2, "completed", [0.5, 0.6, 0.7, 0.90]),  # 1st
    (3, "stopped_early", [0.7, 0.95]),  # 4th
    (4, "failed", [0.4]),  # never ranked
    (5, "diverged", [0.3, float("nan")]),  # never ranked
    (6, "completed", [0.5, 0.6, 0.7, 0.85]),  # 2nd
    (7, "stopped_early", [0.50]),  # 6th: past the five compared
]
RANKED_INDICES = [2, 6, 1, 3, 0]


@pytest.fixture(scope="module")
def fixed_store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A caviar sweep's MLflow layout written by hand: parent, eight children, curves."""
    from mlflow import MlflowClient

    folder = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_experiment("someone-else")  # so the sweep's experiment id is not "1"
    experiment_id = client.create_experiment("fixed-sweep")
    parent = client.create_run(experiment_id, tags={"caviar.kind": "sweep"}, run_name="sweep")
    parent_id = parent.info.run_id
    for key, value in {
        "objective": "max val_accuracy",
        "scheduler.kind": "asha",
        "scheduler.grace_period": "1",
        "scheduler.reduction_factor": "2.0",
        "scheduler.max_epochs": "4",
    }.items():
        client.log_param(parent_id, key, value)
    run_ids: dict[int, str] = {}
    for index, outcome, curve in TRIALS:
        child = client.create_run(
            experiment_id,
            run_name=f"trial-{index:03d}",
            tags={
                "mlflow.parentRunId": parent_id,
                "caviar.trial_id": f"t{index}",
                "caviar.trial_index": str(index),
                "caviar.round": "1",
                "caviar.outcome": outcome,
            },
        )
        run_ids[index] = child.info.run_id
        client.log_param(child.info.run_id, "learning_rate", str(0.01 * (index + 1)))
        for epoch, value in enumerate(curve, start=1):
            client.log_metric(child.info.run_id, "val_accuracy", value, step=epoch)
        client.set_terminated(child.info.run_id)
    client.set_terminated(parent_id)
    return {
        "folder": folder,
        "uri": uri,
        "experiment_id": experiment_id,
        "ranked": [run_ids[i] for i in RANKED_INDICES],
    }


class _Anchors(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        href = dict(attrs).get("href")
        if tag == "a" and href:
            self.hrefs.append(href)


def test_caviar_report_prints_and_pages_the_runs_and_compare_links(
    fixed_store: dict[str, object],
) -> None:
    folder = fixed_store["folder"]
    assert isinstance(folder, Path)
    result = run_caviar(
        "report",
        "fixed-sweep",
        "--tracking-uri",
        str(fixed_store["uri"]),
        "--out",
        str(folder / "report"),
        cwd=folder,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    printed = {
        line.split(":", 1)[0]: line.split(":", 1)[1].strip()
        for line in result.stdout.splitlines()
        if ": " in line
    }
    experiment_id = fixed_store["experiment_id"]
    assert experiment_id != "1"
    assert printed["open the UI"].endswith("--host 127.0.0.1 --port 5000")
    runs = printed["runs table"]
    assert runs == f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs"
    compare = printed["best 5 compared"]
    assert _compare_query(compare) == {
        "runs": fixed_store["ranked"],
        "experiments": [experiment_id],
    }
    assert result.stdout.rstrip().endswith(f"caviar: wrote {folder / 'report' / 'report.html'}")
    # The page links the same two addresses (HTML-escaped in the source, equal once parsed).
    page = (folder / "report" / "report.html").read_text()
    assert f"start it with <code>{printed['open the UI']}</code>" in page
    anchors = _Anchors()
    anchors.feed(page)
    assert runs in anchors.hrefs and compare in anchors.hrefs
    best = fixed_store["ranked"][0]
    assert f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{best}" in anchors.hrefs
