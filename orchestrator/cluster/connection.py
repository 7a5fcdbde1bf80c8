"""The connection to a Ray cluster's job API: its address, the token, one client, and errors
that say what to do.

The only module that imports Ray's job SDK (imported when a :class:`Cluster` is made, so
importing this module loads no Ray). Ray's job API runs code for whoever reaches it, so the
clusters caviar ships require a token: it comes from ``RAY_AUTH_TOKEN`` (or
``RAY_AUTH_TOKEN_PATH``) and is sent as a bearer header; it never travels in the job, its
metadata or a log line. A refusal is told apart: no token sent (401) or the wrong one (403).
Every failure a user can fix (unreachable address, token, unknown job) leaves this module as a
:class:`ClusterError` with a one-screen message.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO, TypeVar
from urllib.parse import urlsplit

from orchestrator.errors import CaviarError

if TYPE_CHECKING:
    from ray.job_submission import JobDetails

# The SDK logs every upload and socket close at INFO on stderr; caviar says what matters itself.
# Two of these modules set their logger to INFO when imported: quieted after the import.
_SDK_LOGGERS = (
    "ray.dashboard.modules.dashboard_sdk",
    "ray.dashboard.modules.job.sdk",
    "ray._private.runtime_env.packaging",
    "ray._private.runtime_env.working_dir",
)

# Ray's JobStatus values (a str enum, so its members compare equal to these).
SUCCEEDED, FAILED, STOPPED = "SUCCEEDED", "FAILED", "STOPPED"
TERMINAL = frozenset({SUCCEEDED, FAILED, STOPPED})
# A head whose job agent is not up yet refuses a submission with HTTP 500 and Ray's words
# "please try again later"; caviar does, for this long, before it reports the refusal.
SUBMIT_RETRY_S = 60.0
SUBMIT_RETRY_INTERVAL_S = 3.0
_TRY_AGAIN = "try again later"


class JobSubmission(Protocol):
    """What :meth:`Cluster.submit` sends (``submit.JobRequest`` is one)."""

    @property
    def job_id(self) -> str: ...
    @property
    def entrypoint(self) -> str: ...
    @property
    def runtime_env(self) -> dict[str, Any]: ...
    @property
    def metadata(self) -> dict[str, str]: ...


class ClusterError(CaviarError):
    """The Ray cluster cannot be used as asked: unreachable, refusing, or missing something."""


class ClusterAuthError(ClusterError):
    """The cluster wants a token that was not sent, or refused the one that was."""


class JobNotFoundError(ClusterError):
    """No job of that id on the cluster."""


# --- the address and the token -----------------------------------------------------------


def resolve_address(address: str | None, environ: Mapping[str, str] = os.environ) -> str:
    """The head's job API as an http(s) URL: ``--address``, else ``$RAY_ADDRESS``."""
    raw = (address or environ.get("RAY_ADDRESS", "")).strip()
    if not raw:
        raise ClusterError(
            "no cluster address: pass --address http://HOST:8265 (the head's dashboard, which "
            "serves the job API) or set RAY_ADDRESS to it"
        )
    if "://" not in raw:
        raw = f"http://{raw}"
    if urlsplit(raw).scheme not in ("http", "https"):
        raise ClusterError(
            f"{raw} is not a job API address; caviar submits through the head's dashboard, "
            "http://HOST:8265 (ray:// client addresses are not used)"
        )
    return raw.rstrip("/")


def auth_headers(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The bearer header from ``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH``; empty if neither."""
    token = environ.get("RAY_AUTH_TOKEN", "").strip()
    path = environ.get("RAY_AUTH_TOKEN_PATH", "").strip()
    if not token and path:
        try:
            token = Path(path).read_text(encoding="utf-8").strip()
        except OSError as error:
            raise ClusterAuthError(
                f"RAY_AUTH_TOKEN_PATH={path} cannot be read ({error.strerror}); point it at the "
                "file holding the cluster's token, or set RAY_AUTH_TOKEN"
            ) from None
    return {"Authorization": f"Bearer {token}"} if token else {}


def _token_source(environ: Mapping[str, str]) -> str:
    if environ.get("RAY_AUTH_TOKEN", "").strip():
        return "RAY_AUTH_TOKEN"
    return "RAY_AUTH_TOKEN_PATH" if environ.get("RAY_AUTH_TOKEN_PATH") else "the environment"


# --- errors ------------------------------------------------------------------------------


@contextmanager
def _translated(
    address: str, job_id: str | None = None, environ: Mapping[str, str] = os.environ
) -> Iterator[None]:
    """Turn the job SDK's exceptions into messages that say what to do."""
    import aiohttp  # installed with ray[default], which the job SDK needs
    import requests
    from ray.exceptions import AuthenticationError

    try:
        yield
    except AuthenticationError as error:
        raise _auth_error(address, str(error), environ) from None
    except aiohttp.WSServerHandshakeError as error:
        if error.status in (401, 403):
            raise _auth_error(address, f"HTTP {error.status}", environ) from None
        if error.status == 404 and job_id:
            raise _job_not_found(address, job_id) from None
        raise ClusterError(f"the cluster at {address} refused the log stream: {error}") from None
    except (
        ConnectionError,
        requests.exceptions.ConnectionError,
        requests.exceptions.Timeout,
        aiohttp.ClientConnectionError,
    ) as error:
        raise ClusterError(
            f"cannot reach the Ray cluster at {address} ({first_line(str(error))}).\n"
            "  Is the head up (docker compose ps; kubectl get pods)? The address is the head's "
            "dashboard, http://HOST:8265, not the GCS port 6379; pass it with --address or "
            "RAY_ADDRESS."
        ) from None
    except RuntimeError as error:
        text = str(error)
        if job_id and ("404" in text or "does not exist" in text):
            raise _job_not_found(address, job_id) from None
        raise ClusterError(f"the cluster at {address} refused: {first_line(text)}") from None


def _auth_error(address: str, detail: str, environ: Mapping[str, str]) -> ClusterAuthError:
    """Missing (nothing in the environment, or the server's 401) or wrong (its 403)."""
    sent = bool(environ.get("RAY_AUTH_TOKEN", "").strip() or environ.get("RAY_AUTH_TOKEN_PATH"))
    if not sent or "401" in detail or "Authentication required" in detail:
        return ClusterAuthError(
            f"the Ray cluster at {address} requires a token and none was sent.\n"
            "  Export the cluster's token before calling caviar: RAY_AUTH_MODE=token and "
            "RAY_AUTH_TOKEN=<the RAY_AUTH_TOKEN in the cluster's .env, or the Kubernetes "
            "Secret caviar-ray-auth> (or RAY_AUTH_TOKEN_PATH=<a file holding it>)."
        )
    return ClusterAuthError(
        f"the Ray cluster at {address} refused the token from {_token_source(environ)}: it is "
        "not the token the cluster was started with.\n"
        "  Use the RAY_AUTH_TOKEN of the cluster's .env (or its Kubernetes Secret "
        "caviar-ray-auth)."
    )


def _job_not_found(address: str, job_id: str) -> JobNotFoundError:
    return JobNotFoundError(
        f"no job {job_id!r} on the cluster at {address}; list its jobs with: "
        f"caviar jobs --address {address}"
    )


def first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0][:300] if lines else "no details"


# --- the connection ----------------------------------------------------------------------


@contextmanager
def _address_from_argument() -> Iterator[None]:
    """Ray's client prefers ``RAY_ADDRESS``/``RAY_API_SERVER_ADDRESS`` to its argument;
    caviar resolved the address already, so hide them while the client is built."""
    names = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")
    saved = {name: os.environ.pop(name) for name in names if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


class Cluster:
    """A connected job client plus the address it talks to; every call translates errors."""

    def __init__(self, address: str, environ: Mapping[str, str] = os.environ) -> None:
        self.address = address
        self.environ = environ
        headers = auth_headers(environ)
        from ray.job_submission import JobSubmissionClient

        for name in _SDK_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        with _address_from_argument(), _translated(address, environ=environ):
            self.client = JobSubmissionClient(address, headers=headers)

    def dashboard_url(self, job_id: str) -> str:
        return f"{self.address}/#/jobs/{job_id}"

    def submit(self, request: JobSubmission, out: TextIO = sys.stdout) -> str:
        """Submit the job; a head that is not ready for jobs yet is asked again for a while."""

        def once() -> str:
            return str(
                self.client.submit_job(
                    entrypoint=request.entrypoint,
                    submission_id=request.job_id,
                    runtime_env=request.runtime_env,
                    metadata=request.metadata,
                )
            )

        with _translated(self.address, environ=self.environ):
            try:
                return retry_until_ready(once, out)
            except RuntimeError as error:
                if _TRY_AGAIN not in str(error):
                    raise
                raise ClusterError(
                    f"the cluster at {self.address} refused: {first_line(str(error))}\n"
                    "  Its head's job agent is not serving. If this lasts, read "
                    "dashboard_agent.log in the head's Ray logs (TEMP_DIR/session_latest/logs): "
                    "an agent whose port was taken (another Ray on the machine has Ray's default "
                    "52365) never serves jobs; start the head with its own "
                    "--dashboard-agent-listen-port."
                ) from None

    def info(self, job_id: str) -> JobDetails:
        with _translated(self.address, job_id, self.environ):
            return self.client.get_job_info(job_id)

    def logs(self, job_id: str) -> str:
        with _translated(self.address, job_id, self.environ):
            return str(self.client.get_job_logs(job_id))

    def stop(self, job_id: str) -> bool:
        with _translated(self.address, job_id, self.environ):
            return bool(self.client.stop_job(job_id))

    def jobs(self) -> list[JobDetails]:
        with _translated(self.address, environ=self.environ):
            return list(self.client.list_jobs())

    def tail(self, job_id: str, out: TextIO) -> str:
        """Stream the job's log to ``out`` until the job ends; returns the text seen."""
        seen: list[str] = []

        async def stream() -> None:
            async for chunk in self.client.tail_job_logs(job_id):
                seen.append(chunk)
                out.write(chunk)
                out.flush()

        import asyncio

        with _translated(self.address, job_id, self.environ):
            asyncio.run(stream())
        return "".join(seen)

    def wait(self, job_id: str, timeout_s: float = 60.0) -> JobDetails:
        """The job's details once it is in a final state (or when ``timeout_s`` runs out)."""
        deadline = time.monotonic() + timeout_s
        details = self.info(job_id)
        while details.status not in TERMINAL and time.monotonic() < deadline:
            time.sleep(0.5)
            details = self.info(job_id)
        return details


T = TypeVar("T")


def retry_until_ready(
    call: Callable[[], T],
    out: TextIO,
    *,
    limit_s: float | None = None,
    interval_s: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``call()``, called again while the cluster answers "try again later" (its job agent is
    not up yet: a cluster that just started), for at most ``limit_s``; a line per retry.

    Any other error, or the same refusal once ``limit_s`` has passed, is raised as it came
    (a ``RuntimeError`` from the job SDK, with how long caviar retried added). The limits
    default to :data:`SUBMIT_RETRY_S` and :data:`SUBMIT_RETRY_INTERVAL_S`.
    """
    limit_s = SUBMIT_RETRY_S if limit_s is None else limit_s
    interval_s = SUBMIT_RETRY_INTERVAL_S if interval_s is None else interval_s
    started = clock()
    while True:
        try:
            return call()
        except RuntimeError as error:
            if _TRY_AGAIN not in str(error):
                raise
            waited = clock() - started
            if waited >= limit_s:
                raise RuntimeError(f"{error} (retried for {waited:.0f} s)") from None
        print(
            f"caviar: the cluster has no job agent ready yet; retrying ({waited:.0f} s of "
            f"{limit_s:.0f} s)",
            file=out,
            flush=True,
        )
        sleep(min(interval_s, max(0.0, limit_s - waited)))
