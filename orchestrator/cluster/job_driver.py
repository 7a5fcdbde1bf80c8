"""``caviar run`` as a Ray job's driver, on the cluster: what it checks and where it runs.

Ray's job supervisor starts a submitted job's entrypoint (``caviar run SPEC``) in the job's
``working_dir`` as unpacked on the head. Before the sweep connects to Ray,
:func:`prepare_job_driver` refuses a tracking store inside that temporary folder (nothing
logged there would last) and moves the driver out of the folder Ray shares between the nodes
of one machine. ``caviar run`` imports this module on every start; it imports no Ray.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from orchestrator.cluster.connection import ClusterError
from orchestrator.spec import SweepSpec

# What Ray's job supervisor hands a job's entrypoint: the job's runtime_env and metadata.
JOB_CONFIG_VARIABLE = "RAY_JOB_CONFIG_JSON_ENV_VAR"


class JobStoreError(ClusterError):
    """A sweep running as a Ray job would log where nothing lasts (the job's temporary folder)."""

    exit_code = 2


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
