"""Where a tracking store is: its URI made absolute, whether it can work, the UI that serves it.

MLflow-free, so the writer's facade, the MLflow sink, the reader and the report all share it
without an import cycle. A store that cannot work is refused here, in one line, before any
compute: :func:`check_store` (before Ray starts; the local file system only) refuses
credentials in an address and an SQLite file whose folder takes no files; MLflow itself would
retry such a store for minutes and then end in a traceback. :func:`check_reachable` adds what
needs the network: an http(s) server must answer, and accept the login MLflow will send.

A password never appears in anything printed, logged or linked: an address with credentials
is refused (MLflow takes them from ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``
instead, which caviar never writes anywhere), and every message and link shows an address
without its user part (:func:`shown`, :func:`ui_base`).
"""

from __future__ import annotations

import base64
import errno
import os
import shlex
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from orchestrator.errors import TrackingError

MLFLOW_UI_DEFAULT_HOST = "127.0.0.1"  # `mlflow ui` without --host
MLFLOW_UI_DEFAULT_PORT = 5000  # `mlflow ui` without --port
_ANY_ADDRESS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": MLFLOW_UI_DEFAULT_HOST}
_HTTP = ("http://", "https://")
_SQLITE = "sqlite:///"
USERNAME_ENV = "MLFLOW_TRACKING_USERNAME"
PASSWORD_ENV = "MLFLOW_TRACKING_PASSWORD"
TOKEN_ENV = "MLFLOW_TRACKING_TOKEN"
# A route an auth-enabled server protects (MLflow's basic auth leaves /health open to all).
_LOGIN_PROBE = "/api/2.0/mlflow/experiments/search?max_results=1"


# Where caviar logs when nothing names a store: a SQLite file in the working folder, as MLflow's
# own default store before 3.x (a file, no server to start).
DEFAULT_TRACKING_URI = _SQLITE + "mlflow.db"


def tracking_uri(chosen: str | None = None, environ: Mapping[str, str] = os.environ) -> str:
    """The store to use: ``chosen`` (a spec's ``tracking.uri``, ``--tracking-uri``) if given,
    else ``$MLFLOW_TRACKING_URI``, else :data:`DEFAULT_TRACKING_URI`. The one place this
    default is decided."""
    return chosen or environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def is_sqlite(uri: str) -> bool:
    return uri.startswith(_SQLITE)


def sqlite_path(uri: str) -> Path | None:
    """The file a ``sqlite:///`` URI names (absolute or relative to the cwd, as MLflow opens
    it: no "~" expanded); None for any other store and for an in-memory database."""
    if not is_sqlite(uri):
        return None
    rest = uri[len(_SQLITE) :].split("?", 1)[0]
    if rest in ("", ":memory:"):
        return None
    return Path(rest)


def ui_command(uri: str) -> str:
    """How to reach the MLflow UI on this store: a tracking server's address itself (a
    browser opens it on any system), else the ``mlflow ui`` command that serves the store."""
    if uri.startswith(_HTTP):
        return _server_address(uri)
    return (
        f"mlflow ui --backend-store-uri {uri} "
        f"--host {MLFLOW_UI_DEFAULT_HOST} --port {MLFLOW_UI_DEFAULT_PORT}"
    )


def ui_base(uri: str, command: str | None = None) -> str:
    """The address the MLflow UI for this store answers at, without a trailing slash.

    An http(s) tracking URI is the UI itself (path kept, for a server behind a prefix; any
    credentials, query or fragment dropped). Any other store is served by ``command`` (an
    ``mlflow ui ... --host H --port P``; default: :func:`ui_command`'s), so its host and port
    are read from that command: the links and the printed command cannot disagree.
    """
    if uri.startswith(_HTTP):
        return _server_address(uri)
    host, port = _host_and_port(command if command is not None else ui_command(uri))
    host = _ANY_ADDRESS.get(host, host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 literal
    return f"http://{host}:{port}"


def shown(uri: str) -> str:
    """``uri`` as a message may print it: an http(s) address without its query or fragment,
    its user part (``user:password@``) shown as ``***@``; any other store as it is."""
    if not uri.startswith(_HTTP):
        return uri
    parts = urlsplit(uri)
    host = parts.netloc.rpartition("@")[2]
    netloc = f"***@{host}" if "@" in parts.netloc else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _server_address(uri: str) -> str:
    """A tracking server's URI as printed and linked: scheme, host, port and path (a server
    behind a prefix), no trailing slash; never its credentials, query or fragment."""
    parts = urlsplit(uri)
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


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


def absolute_uri(uri: str) -> str:
    """Pin a relative SQLite path to the cwd, so the printed UI command works from anywhere."""
    if is_sqlite(uri) and not uri.startswith(_SQLITE + "/"):  # the path kept with its query
        return _SQLITE + str(Path(uri[len(_SQLITE) :]).resolve())
    return uri


def check_store(uri: str) -> None:
    """Refuse a store that cannot work whatever the network does, before anything starts.

    Credentials in an http(s) address are refused (they would be printed and logged with the
    address); an SQLite store must be a file, in a folder that takes new files (SQLite writes
    its journal beside it), or in a missing folder that can be made where the path first
    exists (MLflow makes it). The only I/O: a probe file created and removed at once.
    """
    if uri.startswith(_HTTP):
        _refuse_credentials(uri)
    elif is_sqlite(uri):
        _require_writable_sqlite(uri)


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """:func:`check_store`, then, for an http(s) store, that the server answers ``/health``
    and accepts the login MLflow will send (one more request, to a route auth protects)."""
    check_store(uri)
    if not uri.startswith(_HTTP):
        return
    base = uri.rstrip("/")
    where = shown(base)  # never printed with credentials (refused above; kept out anyway)
    health = _status(urllib.request.Request(base + "/health"), where, timeout_s)
    if health in (401, 403):
        raise TrackingError(_refused_login(where, health))
    if health != 200:
        raise TrackingError(f"MLflow server at {where} answered /health with HTTP {health}")
    login = _status(_login_request(base), where, timeout_s)
    if login in (401, 403):  # any other answer is MLflow's to judge on its first call
        raise TrackingError(_refused_login(where, login))


def _status(request: urllib.request.Request, where: str, timeout_s: float) -> int:
    """The HTTP status the server answers ``request`` with; unreachable: TrackingError."""
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise TrackingError(
            f"cannot reach the MLflow tracking server at {where} ({reason}); start it, "
            "or set tracking.uri / MLFLOW_TRACKING_URI to a reachable store"
        ) from None


def credentials_problem(uri: str) -> str | None:
    """Why ``uri`` cannot be used as it is written, when it carries credentials (else None);
    the message shows the address without them. (A spec's ``tracking.uri`` with a password
    is already refused where the spec is parsed; this covers every other source of a URI:
    ``MLFLOW_TRACKING_URI``, ``--tracking-uri``, a user name alone used as a token.)"""
    if not uri.startswith(_HTTP) or "@" not in urlsplit(uri).netloc:
        return None
    return (
        f"the MLflow tracking URI {shown(uri)} carries credentials, which would be printed "
        f"and logged with it; remove them from the URI and set {USERNAME_ENV} and "
        f"{PASSWORD_ENV} in the environment instead (MLflow sends them to the server)"
    )


def _refuse_credentials(uri: str) -> None:
    problem = credentials_problem(uri)
    if problem:
        raise TrackingError(problem)


def _login_request(base: str) -> urllib.request.Request:
    """The probe, with the credentials MLflow's HTTP client would send (from the environment)."""
    request = urllib.request.Request(base + _LOGIN_PROBE)
    user, password = os.environ.get(USERNAME_ENV), os.environ.get(PASSWORD_ENV)
    token = os.environ.get(TOKEN_ENV)
    if user and password:
        login = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {login}")
    elif token:
        request.add_header("Authorization", f"Bearer {token}")
    return request


def _refused_login(where: str, code: int) -> str:
    """What to set when the server refused the probe: names variables, never their values
    (the user name aside, which is no secret and says which account was refused)."""
    user, password = os.environ.get(USERNAME_ENV), os.environ.get(PASSWORD_ENV)
    both = f"{USERNAME_ENV} and {PASSWORD_ENV}"
    if user and password and code == 401:
        return (
            f"MLflow server at {where} refused the login of user {user!r} (HTTP 401); check {both}"
        )
    if user and password:
        return (
            f"MLflow server at {where} does not let user {user!r} read experiments (HTTP {code}); "
            f"ask its admin for access, or set {both} to another account"
        )
    if os.environ.get(TOKEN_ENV):
        return (
            f"MLflow server at {where} refused the token in {TOKEN_ENV} (HTTP {code}); "
            f"check it, or set {both}"
        )
    return f"MLflow server at {where} asks for a login (HTTP {code}); set {both} in the environment"


def _require_writable_sqlite(uri: str) -> None:
    named = sqlite_path(uri)
    if named is None:
        return
    path = named.absolute()  # as MLflow opens it: relative to the cwd, no "~" expanded
    store = f"MLflow store {uri}"
    fix = "set tracking.uri / MLFLOW_TRACKING_URI to a store in a folder you can write"
    if path.is_dir():
        raise TrackingError(f"{store}: {path} is a folder, not a database file; {fix}")
    folder = path.parent
    if folder.is_dir():
        problem = _cannot_add_files(folder)
        if problem:
            raise TrackingError(f"{store}: cannot write in its folder {folder} ({problem}); {fix}")
        if path.exists():
            try:
                os.close(os.open(path, os.O_RDWR))  # opened for writing, nothing written
            except OSError as error:
                reason = error.strerror or str(error)
                raise TrackingError(f"{store}: cannot write {path} ({reason}); {fix}") from None
        return
    existing = next(p for p in folder.parents if p.exists())  # "/" at the latest
    if not existing.is_dir():
        raise TrackingError(f"{store}: {existing} is a file, so {folder} cannot be made; {fix}")
    problem = _cannot_add_files(existing)
    if problem:
        raise TrackingError(
            f"{store}: its folder {folder} does not exist and cannot be created in "
            f"{existing} ({problem}); {fix}"
        )


def _cannot_add_files(folder: Path) -> str | None:
    """Why ``folder`` takes no new file (None: it does). A probe file is the only test that
    holds for root and for special folders alike (``os.access`` says yes to root for /proc)."""
    try:
        handle, probe = tempfile.mkstemp(prefix=".caviar-write-check-", dir=folder)
    except OSError as error:
        if error.errno == errno.ENOENT:  # the folder is there: it just takes no files (/proc)
            return "it takes no new files"
        return error.strerror or str(error)
    os.close(handle)
    os.unlink(probe)
    return None
