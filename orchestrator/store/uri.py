"""Where a tracking store is: its URI made absolute, whether it answers, the UI that serves it.

MLflow-free, so the writer's facade, the MLflow sink and the reader all share it without an
import cycle. Only :func:`check_reachable` does I/O (one HTTP request, http(s) stores only).
"""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from orchestrator.errors import TrackingError


def ui_command(uri: str) -> str:
    """How to reach the MLflow UI on this store: a tracking server's address itself (a
    browser opens it on any system), else the ``mlflow ui`` command that serves the store."""
    if uri.startswith(("http://", "https://")):
        return _server_address(uri)
    return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"


def ui_base(uri: str) -> str:
    """Where the MLflow UI for this store answers (the address ``ui_command`` serves)."""
    if uri.startswith(("http://", "https://")):
        return _server_address(uri)
    return "http://127.0.0.1:5000"


def _server_address(uri: str) -> str:
    """A tracking server's URI as printed and linked: scheme, host, port and path (a server
    behind a prefix), no trailing slash; never its credentials, query or fragment."""
    parts = urlsplit(uri)
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def absolute_uri(uri: str) -> str:
    """Pin a relative SQLite path to the cwd, so the printed UI command works from anywhere."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail before any compute if an HTTP tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as response:
            if response.status != 200:
                raise TrackingError(
                    f"MLflow server at {uri} answered /health with HTTP {response.status}"
                )
    except urllib.error.HTTPError as error:
        if error.code in (401, 403):
            raise TrackingError(
                f"MLflow server at {uri} refused the request (HTTP {error.code}); "
                "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
            ) from None
        raise TrackingError(f"MLflow server at {uri} answered HTTP {error.code}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise TrackingError(
            f"cannot reach the MLflow tracking server at {uri} ({reason}); start it, "
            "or set tracking.uri / MLFLOW_TRACKING_URI to a reachable store"
        ) from None
