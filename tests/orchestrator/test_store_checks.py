"""A tracking store that cannot work is refused before Ray starts, in one line, secrets unshown.

Issue 24 item 6: ``tracking.uri: sqlite:////proc/nope.db`` gave 105 s of MLflow's retry
warnings, then an uncaught sqlalchemy traceback. Issue 23 item 4: ``http://user:secret@host``
was probed as the host name ``user:secret@host`` and the error printed the password; and an
auth-enabled server (its ``/health`` open to all) passed the probe, then failed on MLflow's
first call without saying which variables to set.
"""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run_caviar
from ports import free_port

from orchestrator.errors import TrackingError
from orchestrator.report.ui_links import ui_base as report_ui_base
from orchestrator.store import uri as store_uri
from orchestrator.store.uri import check_reachable, check_store, ui_base

SECRET = "s3cr3t-pa55"
SPEC = "name: s\nspace: {learning_rate: {values: [0.1]}}\ntracking: {uri: '%s'}\n"


def _refusal(uri: str) -> str:
    with pytest.raises(TrackingError) as excinfo:
        check_reachable(uri, timeout_s=2.0)
    return str(excinfo.value)


# --- SQLite: the folder must take new files --------------------------------------------------


def test_an_sqlite_store_in_a_folder_that_takes_no_files_is_refused() -> None:
    message = _refusal("sqlite:////proc/nope.db")
    assert "cannot write in its folder /proc" in message
    assert "\n" not in message


def test_an_sqlite_store_in_a_missing_folder_that_cannot_be_made_says_so() -> None:
    message = _refusal("sqlite:////proc/no/such/mlflow.db")
    assert "folder /proc/no/such does not exist" in message
    assert "cannot be created in /proc" in message


def test_an_sqlite_store_that_is_a_folder_is_refused(tmp_path: Path) -> None:
    assert f"{tmp_path} is a folder" in _refusal(f"sqlite:///{tmp_path}")


def test_an_sqlite_store_under_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("")
    message = _refusal(f"sqlite:///{tmp_path}/notes.txt/runs/mlflow.db")
    assert f"{tmp_path}/notes.txt is a file, so {tmp_path}/notes.txt/runs cannot be made" in message


def test_an_sqlite_store_in_a_missing_but_creatable_folder_is_fine(tmp_path: Path) -> None:
    """MLflow creates missing folders itself; the check creates nothing and leaves no file."""
    check_store(f"sqlite:///{tmp_path}/new/sub/mlflow.db")
    assert list(tmp_path.iterdir()) == []


def test_an_sqlite_store_in_a_writable_folder_is_fine(tmp_path: Path) -> None:
    (tmp_path / "mlflow.db").write_bytes(b"")
    check_store(f"sqlite:///{tmp_path}/mlflow.db")
    check_store("sqlite://")  # in memory
    assert [p.name for p in tmp_path.iterdir()] == ["mlflow.db"]  # the probe file is gone


def _assert_one_error_line(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("caviar: error: "), stderr


def test_caviar_validate_refuses_an_unwritable_sqlite_store(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(SPEC % "sqlite:////proc/nope.db")
    started = time.monotonic()
    result = run_caviar("validate", "s.yaml", cwd=tmp_path, timeout=60)
    assert time.monotonic() - started < 30
    assert result.returncode != 0
    _assert_one_error_line(result.stderr)
    assert "cannot write in its folder /proc" in result.stderr


def test_caviar_run_refuses_an_unwritable_sqlite_store_before_ray(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(SPEC % "sqlite:////proc/nope.db")
    ray_tmp = tmp_path / "ray"
    ray_tmp.mkdir()
    started = time.monotonic()
    result = run_caviar(
        "run", "s.yaml", "--no-service", cwd=tmp_path, timeout=120, RAY_TMPDIR=str(ray_tmp)
    )
    assert time.monotonic() - started < 60  # was 105 s of retries, then a traceback
    assert result.returncode != 0
    _assert_one_error_line(result.stderr)
    assert "cannot write in its folder /proc" in result.stderr
    assert list(ray_tmp.iterdir()) == []  # Ray never started
    assert not (tmp_path / "caviar_runs").exists()


# --- credentials in the address ---------------------------------------------------------------


def test_credentials_in_the_uri_are_refused_without_printing_them() -> None:
    port = free_port()  # nothing listens there
    message = _refusal(f"http://alice:{SECRET}@127.0.0.1:{port}")
    assert SECRET not in message
    assert "MLFLOW_TRACKING_USERNAME" in message and "MLFLOW_TRACKING_PASSWORD" in message
    assert f"http://***@127.0.0.1:{port}" in message


def test_caviar_validate_refuses_credentials_in_mlflow_tracking_uri(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text("name: s\nspace: {learning_rate: {values: [0.1]}}\n")
    uri = f"https://bob:{SECRET}@mlflow.example.org/"
    result = run_caviar("validate", "s.yaml", cwd=tmp_path, timeout=60, MLFLOW_TRACKING_URI=uri)
    assert result.returncode != 0
    _assert_one_error_line(result.stderr)
    assert SECRET not in result.stderr + result.stdout
    assert "MLFLOW_TRACKING_PASSWORD" in result.stderr


def test_caviar_report_refuses_credentials_in_tracking_uri(tmp_path: Path) -> None:
    uri = f"http://alice:{SECRET}@127.0.0.1:{free_port()}"
    result = run_caviar("report", "some-sweep", "--tracking-uri", uri, cwd=tmp_path, timeout=60)
    assert result.returncode != 0
    _assert_one_error_line(result.stderr)
    assert SECRET not in result.stderr + result.stdout
    assert "MLFLOW_TRACKING_USERNAME" in result.stderr


@pytest.mark.parametrize(
    "uri",
    [
        f"http://alice:{SECRET}@example.org:8080/",
        f"https://{SECRET}@example.org/mlflow/",
        "http://example.org:8080/?token=" + SECRET,
    ],
)
def test_ui_base_is_one_function_and_strips_credentials(uri: str) -> None:
    assert report_ui_base is ui_base
    assert SECRET not in ui_base(uri)
    assert SECRET not in store_uri.ui_command(uri)
    assert ui_base(uri) == ui_base(uri, store_uri.ui_command(uri))


# --- an auth-enabled server -------------------------------------------------------------------


class _AuthServer(http.server.BaseHTTPRequestHandler):
    """An MLflow server with basic auth as MLflow runs it: ``/health`` open to all, every
    other route 401 (or everything 401, with ``all_refused``)."""

    all_refused = False

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path.startswith("/health") and not self.all_refused:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"OK")
            return
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="mlflow"')
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(params=[False, True], ids=["health-open", "all-401"])
def auth_server(request: pytest.FixtureRequest) -> Iterator[str]:
    handler = type("Handler", (_AuthServer,), {"all_refused": request.param})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_401_names_both_variables(auth_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
    message = _refusal(auth_server)
    assert "HTTP 401" in message
    assert "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in message


def test_a_refused_login_names_the_user_never_the_password(
    auth_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SECRET)
    message = _refusal(auth_server)
    assert SECRET not in message
    assert "'alice'" in message and "MLFLOW_TRACKING_PASSWORD" in message
