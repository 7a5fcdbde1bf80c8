"""Sweeps on a Ray cluster: submit, follow, inspect and stop them through Ray's job API.

The only module that imports Ray's job SDK. ``caviar submit SPEC`` uploads the spec's folder
as the job's ``working_dir`` and runs ``caviar run SPEC`` on the cluster, so the cluster needs
caviar installed (``deploy/Dockerfile``) and nothing else from this machine.

Three choices follow from that:

* The sweep logs to the cluster's MLflow (``MLFLOW_TRACKING_URI`` in the head's environment)
  unless the spec names a server; a spec naming a local file (``sqlite:``, ``file:``) is
  refused here, before anything is uploaded, because the cluster cannot write this machine's
  disk.
* Trials on several nodes write checkpoints the driver must read back, so results go to the
  cluster's shared ``CAVIAR_STORAGE_PATH``; a relative ``storage.path`` in a submitted spec
  is refused for the same reason.
* Ray's job API runs code for whoever reaches it, so the clusters caviar ships require a
  token. The token comes from ``RAY_AUTH_TOKEN`` (or ``RAY_AUTH_TOKEN_PATH``) and is sent as
  a bearer header; it never travels in the job, its metadata or a log line. A refusal is
  told apart: no token sent (401) or the wrong one (403).

Every failure a user can fix (unreachable address, token, unknown job, no caviar on the
cluster) leaves this module as a :class:`ClusterError` with a one-screen message.

The job's side lives here too: :func:`prepare_job_driver`, which ``caviar run`` calls when it
runs as a Ray job, refuses a tracking store inside the job's temporary folder and moves the
driver out of the folder Ray shares between the nodes of one machine. ``caviar run`` imports
this module on every start, so Ray's job SDK is imported only where a client needs it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar
from urllib.parse import urlsplit, urlunsplit

from orchestrator.errors import CaviarError, Problem, SpecError
from orchestrator.resume import RESUME_VARIABLE
from orchestrator.spec import SweepSpec, load_spec

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

# Never uploaded: version control, virtualenvs, local tracking stores and Ray results, caches,
# and env files (they hold the cluster's token and database password). Gitignore patterns,
# matched at any depth; Ray also honours the folder's own .gitignore.
UPLOAD_EXCLUDES = (
    ".git",
    ".venv",
    "venv",
    ".tox",
    ".env",
    "*.env",
    "mlflow.db",
    "mlflow.db-*",
    "mlruns",
    "mlartifacts",
    "caviar_runs",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".mypy_cache",
    ".hypothesis",
)
LOCAL_TRACKING_SCHEMES = ("sqlite", "file", "")
# Ray's JobStatus values (a str enum, so its members compare equal to these).
SUCCEEDED, FAILED, STOPPED = "SUCCEEDED", "FAILED", "STOPPED"
TERMINAL = frozenset({SUCCEEDED, FAILED, STOPPED})
# A head whose job agent is not up yet refuses a submission with HTTP 500 and Ray's words
# "please try again later"; caviar does, for this long, before it reports the refusal.
SUBMIT_RETRY_S = 60.0
SUBMIT_RETRY_INTERVAL_S = 3.0
_TRY_AGAIN = "try again later"
# What Ray's job supervisor hands a job's entrypoint: the job's runtime_env and metadata.
JOB_CONFIG_VARIABLE = "RAY_JOB_CONFIG_JSON_ENV_VAR"
MISSING_CAVIAR_SIGNS = (
    "caviar: not found",
    "caviar: command not found",
    "No module named 'orchestrator'",
    "No module named 'trainables'",
    "exit code 127",
)
# Read by the job's supervisor (it runs with the job's runtime_env), not by caviar.
STOP_WAIT_VARIABLE = "RAY_JOB_STOP_WAIT_TIME_S"
STOP_GRACE_S = 60
_SWEEP_LINE = re.compile(r"MLflow run (\w+) in experiment '([^']*)' at (\S+)")


class ClusterError(CaviarError):
    """The Ray cluster cannot be used as asked: unreachable, refusing, or missing something."""


class ClusterAuthError(ClusterError):
    """The cluster wants a token that was not sent, or refused the one that was."""


class JobNotFoundError(ClusterError):
    """No job of that id on the cluster."""


class JobStoreError(ClusterError):
    """A sweep running as a Ray job would log where nothing lasts (the job's temporary folder)."""

    exit_code = 2


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
            f"cannot reach the Ray cluster at {address} ({_first_line(str(error))}).\n"
            "  Is the head up (docker compose ps; kubectl get pods)? The address is the head's "
            "dashboard, http://HOST:8265, not the GCS port 6379; pass it with --address or "
            "RAY_ADDRESS."
        ) from None
    except RuntimeError as error:
        text = str(error)
        if job_id and ("404" in text or "does not exist" in text):
            raise _job_not_found(address, job_id) from None
        raise ClusterError(f"the cluster at {address} refused: {_first_line(text)}") from None


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


def _first_line(text: str) -> str:
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

    def submit(self, request: JobRequest, out: TextIO = sys.stdout) -> str:
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
                    f"the cluster at {self.address} refused: {_first_line(str(error))}\n"
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


# --- submission --------------------------------------------------------------------------


@dataclass(frozen=True)
class JobRequest:
    """Everything a submission sends, built without a cluster (so it can be checked alone)."""

    job_id: str
    spec: SweepSpec
    spec_path: Path
    entrypoint: str
    runtime_env: dict[str, Any]
    metadata: dict[str, str] = field(default_factory=dict)
    shown_spec: str = ""  # the spec's path as the user gave it
    resume: bool = False

    @property
    def folder(self) -> Path:
        return self.spec_path.parent

    def to(self, address: str) -> JobRequest:
        """This request as sent to ``address``: the job, and its metadata, carry the command
        that resumes the sweep from the user's machine (``caviar submit SPEC --resume``), for
        the messages that say how to finish an interrupted sweep."""
        command = resume_submit_command(self.shown_spec or self.spec_path.name, address)
        env_vars = {**self.runtime_env.get("env_vars", {}), RESUME_VARIABLE: command}
        return replace(
            self,
            runtime_env={**self.runtime_env, "env_vars": env_vars},
            metadata={**self.metadata, "caviar.resume": command},
        )


def resume_submit_command(shown_spec: str, address: str) -> str:
    """``caviar submit SPEC --resume --address URL`` (no user or password from the URL)."""
    parts = urlsplit(address)
    if parts.username is not None or parts.password is not None:
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        if parts.port is not None:
            netloc += f":{parts.port}"
        address = urlunsplit(parts._replace(netloc=netloc))
    return shlex.join(["caviar", "submit", shown_spec, "--resume", "--address", address])


def submission_problems(spec: SweepSpec) -> list[Problem]:
    """What in a spec works on this machine but not on a cluster."""
    problems: list[Problem] = []
    uri = spec.tracking.uri
    if uri is not None and urlsplit(uri).scheme in LOCAL_TRACKING_SCHEMES:
        problems.append(
            Problem(
                "tracking.uri",
                f"{uri} is a store on this machine's disk, which the sweep running on the "
                "cluster cannot write; leave tracking.uri unset to log to the cluster's "
                "MLflow (MLFLOW_TRACKING_URI on the head), or give the http(s):// address of a "
                "tracking server the cluster reaches",
            )
        )
    if "path" in spec.storage.model_fields_set and not Path(spec.storage.path).is_absolute():
        problems.append(
            Problem(
                "storage.path",
                f"{spec.storage.path} is relative: on the cluster it would land in the job's "
                "temporary folder on the head, which the other nodes do not share; leave it "
                "unset to use the cluster's shared CAVIAR_STORAGE_PATH, or give an absolute "
                "path on a volume every node mounts",
            )
        )
    return problems


def build_request(spec_path: Path, resume: bool = False) -> JobRequest:
    """Load and check the spec, then describe the job: folder, entrypoint, excludes, id.

    With ``resume`` the job finishes the spec's interrupted sweep on the cluster (``caviar
    run SPEC --resume``: its journal and checkpoints are in the cluster's shared storage)."""
    spec = load_spec(spec_path)
    problems = submission_problems(spec)
    if problems:
        raise SpecError(problems, str(spec_path))
    path = spec_path.resolve()
    runtime_env = {
        "working_dir": str(path.parent),
        "excludes": upload_excludes(path.parent),
        "env_vars": {
            "PYTHONUNBUFFERED": "1",  # the log streams as the sweep runs
            # `caviar stop` (Ray's job stop) sends SIGTERM, then SIGKILL after this many
            # seconds (Ray's default: 3): the time for the sweep to end as interrupted (its
            # runs marked, what finished saved, the line that says how to resume it).
            STOP_WAIT_VARIABLE: str(STOP_GRACE_S),
        },
        # Each node unpacks the folder when the driver connects (a node sharing the head's
        # temp folder deletes and unpacks it again then, which the driver survives:
        # leave_shared_folder), not when a trial starts there. Ray's default, stated.
        "config": {"eager_install": True},
    }
    return JobRequest(
        job_id=f"caviar-{spec.name}-{secrets.token_hex(3)}",
        spec=spec,
        spec_path=path,
        entrypoint=shlex.join(["caviar", "run", path.name, *(["--resume"] if resume else [])]),
        runtime_env=runtime_env,
        metadata={
            "caviar.spec": path.name,
            "caviar.sweep": spec.name,
            "caviar.experiment": spec.experiment_name,
        },
        shown_spec=str(spec_path),
        resume=resume,
    )


def upload_excludes(folder: Path) -> list[str]:
    """The fixed excludes plus any virtualenv in the folder, whatever its name."""
    excludes = list(UPLOAD_EXCLUDES)
    try:
        children = sorted(p for p in folder.iterdir() if p.is_dir())
    except OSError:
        children = []
    for child in children:
        is_env = (child / "pyvenv.cfg").is_file() or (child / "conda-meta").is_dir()
        if is_env and child.name not in excludes:
            excludes.append(f"/{child.name}")
    return excludes


def submit(
    spec_path: Path,
    address: str | None,
    follow: bool,
    out: TextIO = sys.stdout,
    resume: bool = False,
) -> int:
    """``caviar submit``: send the sweep, say where to watch it; with ``follow``, watch it.

    With ``resume``: a job that finishes the spec's interrupted sweep (one a ``caviar stop``
    or a failure ended), in the same MLflow parent run."""
    request = build_request(spec_path, resume)  # a bad spec fails before any network call
    cluster = Cluster(resolve_address(address))
    request = request.to(cluster.address)
    job_id = cluster.submit(request, out)
    tracking = request.spec.tracking.uri or "the cluster's MLFLOW_TRACKING_URI (set on the head)"
    what = "resumes the interrupted sweep" if resume else "sweep:     "
    print(
        f"caviar: submitted job {job_id} to {cluster.address}\n"
        f"  {what} {request.spec.name} ({request.spec.num_trials()} trials), "
        f"entrypoint: {request.entrypoint}\n"
        f"  uploaded:   {request.folder} (without .git, virtualenvs, mlflow.db, mlruns/, "
        "caviar_runs/, .env files)\n"
        f"  dashboard:  {cluster.dashboard_url(job_id)}\n"
        f"  MLflow:     experiment {request.spec.experiment_name!r} at {tracking}\n"
        f"  follow:     caviar logs {job_id} --follow --address {cluster.address}",
        file=out,
        flush=True,
    )
    if not follow:
        return 0
    return _follow(cluster, job_id, out)


def _follow(cluster: Cluster, job_id: str, out: TextIO) -> int:
    try:
        seen = cluster.tail(job_id, out)
    except KeyboardInterrupt:
        print(
            f"\ncaviar: stopped following; job {job_id} goes on running on the cluster "
            f"(caviar stop {job_id} --address {cluster.address} stops it)",
            file=out,
        )
        return 130
    details = cluster.wait(job_id)
    print(_closing_line(job_id, details), file=out)
    found = _SWEEP_LINE.search(seen)
    if found:
        run_id, experiment, uri = found.groups()
        print(f"  MLflow:     experiment {experiment!r}, parent run {run_id} at {uri}", file=out)
    if details.status != SUCCEEDED:
        hint = diagnose(details, seen)
        if hint:
            raise ClusterError(hint)
        return 1
    return 0


def _closing_line(job_id: str, details: JobDetails) -> str:
    took = _duration(details)
    line = f"caviar: job {job_id} {details.status}" + (f" after {took}" if took else "")
    if details.status != SUCCEEDED and details.message:
        line += f": {_first_line(details.message)}"
    return line


def diagnose(details: JobDetails, logs: str = "") -> str | None:
    """Say why a job failed when the reason is the cluster's, not the sweep's."""
    if details.status != FAILED:
        return None
    text = f"{details.message or ''}\n{logs[-20000:]}"
    if any(sign in text for sign in MISSING_CAVIAR_SIGNS):
        return (
            f"job {details.submission_id} failed because the cluster has no caviar installed "
            "(its entrypoint `caviar run` was not found).\n"
            "  Run the cluster from the image built by deploy/Dockerfile (docker compose build; "
            "the KubeRay manifests in deploy/k8s use it), or pip install caviar on every node."
        )
    if details.error_type and "RUNTIME_ENV" in str(details.error_type):
        return (
            f"job {details.submission_id} failed before it started: the cluster could not set "
            f"up its runtime environment ({_first_line(details.message or '')})"
        )
    return None


# --- the job's driver, on the cluster ----------------------------------------------------


@dataclass(frozen=True)
class JobDriver:
    """This process as a Ray job's driver, started in the job's unpacked ``working_dir``."""

    submission_id: str
    folder: Path


def job_driver(environ: Mapping[str, str] = os.environ) -> JobDriver | None:
    """The job this process is the driver of, if it runs in a ``working_dir``; else None.

    Ray's job supervisor gives the entrypoint ``RAY_JOB_CONFIG_JSON_ENV_VAR`` (the job's
    runtime_env and metadata; it sets no RAY_JOB_ID) and starts it with ``cd FOLDER &&``,
    where FOLDER is the working_dir as unpacked on the head.
    """
    raw = environ.get(JOB_CONFIG_VARIABLE, "")
    try:
        config = json.loads(raw) if raw else {}
    except ValueError:
        return None
    if not isinstance(config, dict) or not (config.get("runtime_env") or {}).get("working_dir"):
        return None
    metadata = config.get("metadata") or {}
    folder = _start_folder(environ)
    if folder is None:
        return None
    return JobDriver(str(metadata.get("job_submission_id") or ""), folder)


def _start_folder(environ: Mapping[str, str]) -> Path | None:
    """The current directory; if it was deleted under this process, its path again."""
    try:
        return Path.cwd()
    except FileNotFoundError:
        pwd = environ.get("PWD", "")
        if pwd and Path(pwd).is_dir():
            os.chdir(pwd)
            return Path.cwd()
        return None


def local_store_path(uri: str) -> Path | None:
    """The file or folder a local MLflow store URI names (relative as given); None for a server."""
    scheme = urlsplit(uri).scheme
    if scheme == "sqlite":  # sqlite:///relative.db, sqlite:////absolute.db
        return Path(uri.split(":///", 1)[1]) if ":///" in uri else None
    if scheme == "file":
        return Path(urlsplit(uri).path)
    if scheme == "":
        return Path(uri)
    return None


def check_job_store(
    spec: SweepSpec, driver: JobDriver, environ: Mapping[str, str] = os.environ
) -> None:
    """Refuse a tracking store inside the job's working_dir: Ray deletes that folder (with its
    session, or sooner when the folder's cache entry is evicted), so nothing logged would last.
    """
    uri = spec.tracking_uri(environ)
    path = local_store_path(uri)
    if path is None:
        return
    where = Path(os.path.normpath(driver.folder / path))  # an absolute path stays as it is
    if not where.is_relative_to(driver.folder):
        return  # a file the head keeps (sqlite:////data/mlflow.db): it lasts
    if spec.tracking.uri:
        source = "the spec's tracking.uri"
    elif environ.get("MLFLOW_TRACKING_URI"):
        source = "MLFLOW_TRACKING_URI on the head"
    else:
        source = "caviar's default: the head has no MLFLOW_TRACKING_URI"
    job = f"Ray job {driver.submission_id}" if driver.submission_id else "a Ray job"
    raise JobStoreError(
        f"this sweep runs as {job} and would log to {uri} ({source}), a store in the job's "
        f"temporary working directory {driver.folder}: Ray deletes it, so no result would "
        "last. Nothing was trained.\n"
        "  Fix: start the Ray head with MLFLOW_TRACKING_URI set to the cluster's tracking "
        "server (docker-compose.yml and deploy/k8s set http://mlflow:5000), or set tracking.uri "
        "in the spec to an http(s):// tracking server the cluster reaches; then submit again."
    )


def leave_shared_folder(driver: JobDriver) -> Path:
    """Go on in a private copy of the job's folder, and return the copy.

    Invariant after this call: nothing the driver opens by a relative path, nor its current
    directory, lies in the folder Ray unpacked. Nodes that share a temp folder (a second
    ``ray start`` on the head's machine without ``--temp-dir`` takes the head's) unpack a job's
    working_dir into the same place, and a node's runtime-env agent deletes and unpacks it again
    when the driver connects to Ray; a process whose current directory was deleted cannot load
    torch ("Intel oneMKL FATAL ERROR: Cannot load .../libtorch_cpu.so"). The copy sits next to
    the unpacked folder, so Ray's session takes it away with that folder.
    """
    label = re.sub(r"[^A-Za-z0-9_.-]", "_", driver.submission_id)[:60] or "job"
    try:
        private = Path(tempfile.mkdtemp(prefix=f"caviar-driver-{label}-", dir=driver.folder.parent))
    except OSError:
        private = Path(tempfile.mkdtemp(prefix=f"caviar-driver-{label}-"))
    shutil.copytree(driver.folder, private, symlinks=True, dirs_exist_ok=True)
    os.chdir(private)
    os.environ["PWD"] = str(private)
    sys.path[:] = [str(private) if entry == str(driver.folder) else entry for entry in sys.path]
    return private


def prepare_job_driver(spec: SweepSpec, environ: Mapping[str, str] = os.environ) -> None:
    """``caviar run`` as a Ray job's driver, before it connects to Ray: refuse a store in the
    job's temporary folder (:func:`check_job_store`), then leave the folder Ray may unpack
    again (:func:`leave_shared_folder`). Outside a Ray job with a working_dir: nothing."""
    driver = job_driver(environ)
    if driver is None:
        return
    check_job_store(spec, driver, environ)
    leave_shared_folder(driver)


# --- the other commands ------------------------------------------------------------------


def status(job_id: str, address: str | None, out: TextIO = sys.stdout) -> int:
    cluster = Cluster(resolve_address(address))
    details = cluster.info(job_id)
    metadata = details.metadata or {}
    lines = [
        f"job {job_id}: {details.status}",
        f"  message:    {_first_line(details.message or '')}",
        f"  started:    {_when(details.start_time)}"
        + (f", ended {_when(details.end_time)} ({_duration(details)})" if details.end_time else ""),
        f"  entrypoint: {details.entrypoint}",
    ]
    if metadata.get("caviar.sweep"):
        lines.append(
            f"  sweep:      {metadata['caviar.sweep']} (MLflow experiment "
            f"{metadata.get('caviar.experiment', metadata['caviar.sweep'])!r})"
        )
    lines.append(f"  dashboard:  {cluster.dashboard_url(job_id)}")
    print("\n".join(lines), file=out)
    if details.status == FAILED:
        hint = diagnose(details, cluster.logs(job_id))
        if hint:
            print(f"  why:        {hint}", file=out)
    return 0


def logs(job_id: str, address: str | None, follow: bool, out: TextIO = sys.stdout) -> int:
    cluster = Cluster(resolve_address(address))
    cluster.info(job_id)  # an unknown id is an error, not an empty log
    if follow:
        return _follow(cluster, job_id, out)
    out.write(cluster.logs(job_id))
    out.flush()
    return 0


def stop(job_id: str, address: str | None, out: TextIO = sys.stdout) -> int:
    cluster = Cluster(resolve_address(address))
    if not cluster.stop(job_id):
        print(f"job {job_id} had already ended: {cluster.info(job_id).status}", file=out)
        return 0
    details = cluster.wait(job_id, timeout_s=STOP_GRACE_S + 15.0)
    print(f"job {job_id}: {details.status}", file=out)
    command = (details.metadata or {}).get("caviar.resume")
    if details.status == STOPPED and command:
        print(f"  finish its sweep with:  {command}", file=out)
    return 0


def jobs(address: str | None, out: TextIO = sys.stdout) -> int:
    cluster = Cluster(resolve_address(address))
    found = [j for j in cluster.jobs() if j.submission_id]
    if not found:
        print(f"no jobs on the cluster at {cluster.address}", file=out)
        return 0
    found.sort(key=lambda j: j.start_time or 0)
    rows = [("JOB", "STATUS", "STARTED", "TOOK", "SPEC")]
    for job in found:
        spec = (job.metadata or {}).get("caviar.spec") or job.entrypoint
        rows.append(
            (
                str(job.submission_id),
                str(job.status),
                _when(job.start_time),
                _duration(job) or "-",
                spec,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:  # the last column (the spec) is not padded
        cells = [row[i].ljust(widths[i]) for i in range(4)] + [row[4]]
        print("  ".join(cells), file=out)
    return 0


def _when(millis: int | None) -> str:
    if not millis:
        return "-"
    return datetime.fromtimestamp(millis / 1000).strftime("%Y-%m-%d %H:%M:%S")


def _duration(details: JobDetails) -> str:
    if not details.start_time:
        return ""
    end = details.end_time or int(time.time() * 1000)
    seconds = max(0.0, (end - details.start_time) / 1000)
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
