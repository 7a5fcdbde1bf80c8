"""Sweeps on a Ray cluster: ``caviar submit``, and ``caviar status`` / ``logs`` / ``stop`` /
``jobs`` for what it submitted, through Ray's job API (the connection: ``connection.py``).

``caviar submit SPEC`` uploads the spec's folder as the job's ``working_dir`` and runs
``caviar run SPEC`` on the cluster, so the cluster needs caviar installed
(``deploy/Dockerfile``) and nothing else from this machine.

Three choices follow from that:

* The sweep logs to the cluster's MLflow (``MLFLOW_TRACKING_URI`` in the head's environment)
  unless the spec names a server; a spec naming a local file (``sqlite:``, ``file:``) is
  refused here, before anything is uploaded, because the cluster cannot write this machine's
  disk.
* Trials on several nodes write checkpoints the driver must read back, so results go to the
  cluster's shared ``CAVIAR_STORAGE_PATH``; a relative ``storage.path`` in a submitted spec
  is refused for the same reason.
* Ray's job API runs code for whoever reaches it, so the clusters caviar ships require a
  token (``connection.py`` sends it; it never travels in the job, its metadata or a log line).

A cluster without caviar installed is told apart from a failing sweep (:func:`diagnose`). The
job's side, ``caviar run`` as the job's driver on the cluster, is ``job_driver.py``.
"""

from __future__ import annotations

import re
import secrets
import shlex
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import urlsplit, urlunsplit

from orchestrator.cluster.connection import (
    FAILED,
    STOPPED,
    SUCCEEDED,
    Cluster,
    ClusterError,
    first_line,
    resolve_address,
)
from orchestrator.errors import Problem, SpecError
from orchestrator.resume import RESUME_VARIABLE
from orchestrator.spec import SweepSpec, load_spec

if TYPE_CHECKING:
    from ray.job_submission import JobDetails

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
        line += f": {first_line(details.message)}"
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
            f"up its runtime environment ({first_line(details.message or '')})"
        )
    return None


# --- the other commands ------------------------------------------------------------------


def status(job_id: str, address: str | None, out: TextIO = sys.stdout) -> int:
    cluster = Cluster(resolve_address(address))
    details = cluster.info(job_id)
    metadata = details.metadata or {}
    lines = [
        f"job {job_id}: {details.status}",
        f"  message:    {first_line(details.message or '')}",
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
