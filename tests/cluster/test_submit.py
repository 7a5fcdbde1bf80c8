"""Submitting without a cluster: addresses, tokens, what a cluster cannot run, what is uploaded,
and the errors a user meets before any job exists."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import sys
import tempfile
import types
import zipfile
from pathlib import Path
from typing import Any

import pytest
from conftest import run_caviar
from ray._private.runtime_env.packaging import create_package
from ray.job_submission import JobDetails, JobStatus

from orchestrator.cluster import connection
from orchestrator.cluster import job_driver as job_side
from orchestrator.cluster import submit as cluster
from orchestrator.cluster.connection import ClusterAuthError, ClusterError
from orchestrator.errors import SpecError
from orchestrator.spec import parse_spec_text

SPEC = """
name: iris-submit
data: {source: iris}
space:
  learning_rate: {scale: log, low: 0.01, high: 0.5}
fixed: {optimizer: sgd}
search: {num_trials: 2}
scheduler: {kind: fifo, max_epochs: 2}
"""


def spec_with(extra: str) -> str:
    return SPEC + extra


# --- address and token -------------------------------------------------------------------


def test_address_comes_from_the_flag_then_ray_address() -> None:
    assert connection.resolve_address("http://h:8265/", {}) == "http://h:8265"
    assert (
        connection.resolve_address(None, {"RAY_ADDRESS": "10.0.0.5:8265"}) == "http://10.0.0.5:8265"
    )
    assert connection.resolve_address("https://h", {"RAY_ADDRESS": "http://x"}) == "https://h"
    with pytest.raises(ClusterError, match="no cluster address.*--address"):
        connection.resolve_address(None, {})
    with pytest.raises(ClusterError, match="not a job API address"):
        connection.resolve_address("ray://h:10001", {})


def test_token_comes_from_the_environment_or_a_file(tmp_path: Path) -> None:
    assert connection.auth_headers({}) == {}
    assert connection.auth_headers({"RAY_AUTH_TOKEN": " t0k "}) == {"Authorization": "Bearer t0k"}
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    headers = connection.auth_headers({"RAY_AUTH_TOKEN_PATH": str(token_file)})
    assert headers == {"Authorization": "Bearer from-file"}
    with pytest.raises(ClusterAuthError, match="RAY_AUTH_TOKEN_PATH=.*cannot be read"):
        connection.auth_headers({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")})


# --- what a cluster cannot run -----------------------------------------------------------


@pytest.mark.parametrize(
    "uri", ["sqlite:///mlflow.db", "sqlite:////abs/mlflow.db", "file:///tmp/mlruns", "mlruns"]
)
def test_a_local_tracking_store_is_refused_with_the_reason(uri: str) -> None:
    spec = parse_spec_text(spec_with(f"tracking: {{uri: '{uri}'}}\n"))
    (problem,) = cluster.submission_problems(spec)
    assert problem.path == "tracking.uri"
    assert "cluster cannot write" in problem.message
    assert (
        "leave tracking.uri unset" in problem.message and "MLFLOW_TRACKING_URI" in problem.message
    )


def test_a_server_uri_or_none_is_fine() -> None:
    assert cluster.submission_problems(parse_spec_text(SPEC)) == []
    served = parse_spec_text(spec_with("tracking: {uri: 'http://mlflow:5000'}\n"))
    assert cluster.submission_problems(served) == []


def test_a_relative_storage_path_is_refused_an_absolute_one_is_not() -> None:
    relative = parse_spec_text(spec_with("storage: {path: runs}\n"))
    (problem,) = cluster.submission_problems(relative)
    assert problem.path == "storage.path" and "CAVIAR_STORAGE_PATH" in problem.message
    absolute = parse_spec_text(spec_with("storage: {path: /shared/runs}\n"))
    assert cluster.submission_problems(absolute) == []


def test_storage_path_prefers_the_spec_then_the_clusters_shared_volume() -> None:
    shared = {"CAVIAR_STORAGE_PATH": "/shared/caviar_runs"}
    assert parse_spec_text(SPEC).storage_path({}) == "caviar_runs"
    assert parse_spec_text(SPEC).storage_path(shared) == "/shared/caviar_runs"
    explicit = parse_spec_text(spec_with("storage: {path: /mine}\n"))
    assert explicit.storage_path(shared) == "/mine"


# --- the request and the upload ----------------------------------------------------------


def project(tmp_path: Path) -> Path:
    """A spec's folder holding everything that must not travel, and one file that must."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "iris.yaml").write_text(SPEC)
    (folder / "notes").mkdir()
    (folder / "notes" / "readme.txt").write_text("travels")
    for unwanted in (".git/HEAD", ".venv/bin/python", "mlruns/0/meta.yaml", "caviar_runs/x/y"):
        path = folder / unwanted
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    (folder / "myenv").mkdir()
    (folder / "myenv" / "pyvenv.cfg").write_text("home = /usr/bin\n")  # a venv by any name
    (folder / "mlflow.db").write_text("x")
    (folder / ".env").write_text("RAY_AUTH_TOKEN=secret\n")
    (folder / "cluster.env").write_text("POSTGRES_PASSWORD=secret\n")
    return folder


def test_request_runs_caviar_on_the_spec_in_its_uploaded_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAY_AUTH_TOKEN", "must-not-travel")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///laptop.db")
    folder = project(tmp_path)
    request = cluster.build_request(folder / "iris.yaml")
    assert request.entrypoint == "caviar run iris.yaml"
    assert request.runtime_env["working_dir"] == str(folder.resolve())
    assert request.job_id.startswith("caviar-iris-submit-")
    assert request.metadata["caviar.experiment"] == "iris-submit"
    assert request.runtime_env["env_vars"] == {
        "PYTHONUNBUFFERED": "1",
        "RAY_JOB_STOP_WAIT_TIME_S": "60",  # caviar stop: time to end as interrupted
    }
    assert request.runtime_env["config"] == {"eager_install": True}
    assert "must-not-travel" not in repr(request) and "laptop.db" not in repr(request)
    assert "/myenv" in request.runtime_env["excludes"]


def test_a_resumed_submission_runs_caviar_run_resume_and_every_job_knows_its_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep's state is on the cluster: its resume is a submission, as the user types it."""
    folder = project(tmp_path)
    monkeypatch.chdir(tmp_path)
    shown = str(Path("project") / "iris.yaml")
    resume = f"caviar submit {shown} --resume --address http://head:8265"
    for again in (False, True):
        request = cluster.build_request(Path(shown), resume=again).to("http://head:8265")
        assert request.entrypoint == "caviar run iris.yaml" + (" --resume" if again else "")
        assert request.runtime_env["working_dir"] == str(folder.resolve())
        assert request.runtime_env["env_vars"]["CAVIAR_RESUME_COMMAND"] == resume
        assert request.metadata["caviar.resume"] == resume
    # No user or password of the address reaches the job's environment or its metadata.
    secret = cluster.build_request(folder / "iris.yaml").to("http://me:pw@head:8265")
    assert "pw" not in json.dumps(secret.runtime_env) + json.dumps(secret.metadata)
    assert secret.metadata["caviar.resume"].endswith("--resume --address http://head:8265")


def test_a_submitted_jobs_messages_name_submit_resume_not_run_resume(tmp_path: Path) -> None:
    from orchestrator.resume import resume_command
    from orchestrator.store.markers import ResumeError, pick_for_resume
    from orchestrator.store.sweep_lock import _running_message

    job = {"CAVIAR_RESUME_COMMAND": "caviar submit s.yaml --resume --address http://h:8265"}
    assert resume_command("s.yaml", {}) == "caviar run s.yaml --resume"
    assert resume_command("s.yaml", job) == job["CAVIAR_RESUME_COMMAND"]
    with pytest.MonkeyPatch.context() as patch:
        for name, value in job.items():
            patch.setenv(name, value)
        assert "then, if it was interrupted:  caviar submit s.yaml --resume --address" in (
            _running_message("s", {}, "s.yaml")
        )
        with pytest.raises(ResumeError, match="submit without --resume"):
            pick_for_resume(tmp_path, "0" * 64)


def test_upload_leaves_out_vcs_venvs_local_stores_results_and_env_files(tmp_path: Path) -> None:
    """Build the package exactly as Ray's job client does, and read what is in it."""
    folder = project(tmp_path)
    package = tmp_path / "package.zip"
    create_package(
        str(folder), package, include_gitignore=True, excludes=cluster.upload_excludes(folder)
    )
    names = set(zipfile.ZipFile(package).namelist())
    assert "iris.yaml" in names and "notes/readme.txt" in names
    for left_out in (".git", ".venv", "myenv", "mlruns", "caviar_runs", "mlflow.db", ".env"):
        assert not [n for n in names if n == left_out or n.startswith(left_out + "/")], left_out
    assert "cluster.env" not in names


def test_build_request_refuses_a_local_store_before_any_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = tmp_path / "local.yaml"
    spec.write_text(spec_with("tracking: {uri: 'sqlite:///mlflow.db'}\n"))

    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("build_request opened a connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    with pytest.raises(SpecError, match="tracking.uri"):
        cluster.build_request(spec)


# --- failures explained ------------------------------------------------------------------


def details(message: str, status: JobStatus = JobStatus.FAILED) -> JobDetails:
    return JobDetails(
        type="SUBMISSION",
        submission_id="caviar-x-1",
        status=status,
        entrypoint="caviar run x.yaml",
        message=message,
    )


def test_a_cluster_without_caviar_is_named_as_such() -> None:
    failed = details("Job entrypoint command failed with exit code 127, last available logs")
    hint = cluster.diagnose(failed, "/bin/sh: 1: caviar: not found\n")
    assert hint is not None and "no caviar installed" in hint and "deploy/Dockerfile" in hint
    assert cluster.diagnose(details("exit code 1"), "ValueError: boom") is None
    assert cluster.diagnose(details("", JobStatus.SUCCEEDED), "caviar: not found") is None


def test_cli_refuses_a_local_store_with_exit_2_and_no_traceback(tmp_path: Path) -> None:
    (tmp_path / "local.yaml").write_text(spec_with("tracking: {uri: 'sqlite:///mlflow.db'}\n"))
    result = run_caviar("submit", "local.yaml", "--address", "http://127.0.0.1:9", cwd=tmp_path)
    assert result.returncode == 2
    assert "tracking.uri" in result.stderr and "cluster cannot write" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_says_when_the_cluster_is_unreachable(tmp_path: Path) -> None:
    (tmp_path / "iris.yaml").write_text(SPEC)
    result = run_caviar("submit", "iris.yaml", "--address", "http://127.0.0.1:9", cwd=tmp_path)
    assert result.returncode == 1
    assert "cannot reach the Ray cluster at http://127.0.0.1:9" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) < 8
    jobs = run_caviar("jobs", cwd=tmp_path, RAY_ADDRESS="127.0.0.1:9")
    assert jobs.returncode == 1 and "cannot reach" in jobs.stderr


def test_cli_asks_for_an_address(tmp_path: Path) -> None:
    result = run_caviar("status", "caviar-x", cwd=tmp_path)
    assert result.returncode == 1
    assert "no cluster address" in result.stderr and "Traceback" not in result.stderr


def test_cli_lists_the_cluster_commands(tmp_path: Path) -> None:
    result = run_caviar("--help", cwd=tmp_path)
    for command in ("submit", "status", "logs", "stop", "jobs"):
        assert command in result.stdout
    submit = run_caviar("submit", "--help", cwd=tmp_path)
    assert "--address" in submit.stdout and "--follow" in submit.stdout


# --- a cluster that is not ready for jobs yet --------------------------------------------

NOT_READY = (
    "Request failed with status code 500: No available agent to submit job, please try again "
    "later.."
)


class FakeTime:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def refusing(times: int, then: str = "caviar-job-1") -> Any:
    calls: list[int] = []

    def submit() -> str:
        calls.append(1)
        if len(calls) <= times:
            raise RuntimeError(NOT_READY)
        return then

    submit.calls = calls  # type: ignore[attr-defined]
    return submit


def test_a_cluster_not_ready_for_jobs_is_asked_again_with_a_line_per_try() -> None:
    fake, out = FakeTime(), io.StringIO()
    submit = refusing(3)
    job = connection.retry_until_ready(
        submit, out, interval_s=4, clock=fake.clock, sleep=fake.sleep
    )
    assert job == "caviar-job-1" and len(submit.calls) == 4
    assert fake.sleeps == [4, 4, 4]
    assert out.getvalue().splitlines() == [
        f"caviar: the cluster has no job agent ready yet; retrying ({s} s of 60 s)"
        for s in (0, 4, 8)
    ]


def test_retrying_stops_at_the_limit_with_the_clusters_message() -> None:
    fake, out = FakeTime(), io.StringIO()
    submit = refusing(10**6)
    with pytest.raises(RuntimeError) as raised:
        connection.retry_until_ready(submit, out, clock=fake.clock, sleep=fake.sleep)
    assert NOT_READY in str(raised.value) and "retried for 60 s" in str(raised.value)
    assert fake.now - 1000.0 == connection.SUBMIT_RETRY_S == 60.0  # bounded, to the second
    assert len(submit.calls) == len(fake.sleeps) + 1 == 21
    assert out.getvalue().splitlines()[-1].endswith("retrying (57 s of 60 s)")


def test_other_refusals_are_not_retried() -> None:
    fake, out = FakeTime(), io.StringIO()
    calls: list[int] = []

    def submit() -> str:
        calls.append(1)
        raise RuntimeError("Request failed with status code 400: Job with submission_id x exists")

    with pytest.raises(RuntimeError, match="status code 400"):
        connection.retry_until_ready(submit, out, clock=fake.clock, sleep=fake.sleep)
    assert calls == [1] and fake.sleeps == [] and out.getvalue() == ""


def test_submit_retries_then_reports_the_refusal_as_a_cluster_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Cluster.submit wraps the retry; its final refusal is the usual one-line ClusterError."""
    monkeypatch.setattr(connection, "SUBMIT_RETRY_S", 0.3)
    monkeypatch.setattr(connection, "SUBMIT_RETRY_INTERVAL_S", 0.1)
    folder = project(tmp_path)
    request = cluster.build_request(folder / "iris.yaml")
    client = types.SimpleNamespace(
        submit_job=lambda **_: (_ for _ in ()).throw(RuntimeError(NOT_READY))
    )
    target = object.__new__(connection.Cluster)
    target.address, target.environ, target.client = "http://127.0.0.1:9", {}, client
    out = io.StringIO()
    with pytest.raises(ClusterError, match=r"refused: .*try again later.*retried for 0 s") as e:
        target.submit(request, out)
    assert "dashboard_agent.log" in str(e.value) and "--dashboard-agent-listen-port" in str(e.value)
    assert "retrying (0 s of 0 s)" in out.getvalue()

    ready = types.SimpleNamespace(submit_job=lambda **kw: kw["submission_id"])
    target.client = ready
    assert target.submit(request, io.StringIO()) == request.job_id


# --- the job's driver on the cluster -----------------------------------------------------


def job_environ(folder_name: str = "", **extra: str) -> dict[str, str]:
    """What Ray's job supervisor gives an entrypoint (RAY_JOB_CONFIG_JSON_ENV_VAR)."""
    config = {
        "runtime_env": {"working_dir": "gcs://_ray_pkg_0123456789abcdef.zip"},
        "metadata": {"job_submission_id": "caviar-iris-submit-abc123", "job_name": "x"},
    }
    return {"RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps(config), **extra}


def test_a_ray_job_with_a_working_dir_is_recognised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert job_side.job_driver({}) is None
    no_folder = {"RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps({"runtime_env": {}, "metadata": {}})}
    assert job_side.job_driver(no_folder) is None
    assert job_side.job_driver({"RAY_JOB_CONFIG_JSON_ENV_VAR": "not json"}) is None
    driver = job_side.job_driver(job_environ())
    assert driver == job_side.JobDriver("caviar-iris-submit-abc123", tmp_path.resolve())


@pytest.mark.parametrize(
    ("spec_uri", "environ_uri", "source"),
    [
        (None, None, "caviar's default: the head has no MLFLOW_TRACKING_URI"),
        (None, "sqlite:///mlflow.db", "MLFLOW_TRACKING_URI on the head"),
        (None, "mlruns", "MLFLOW_TRACKING_URI on the head"),
        ("file:./mlruns", None, "the spec's tracking.uri"),
        ("sqlite:///sub/../runs.db", "http://mlflow:5000", "the spec's tracking.uri"),
    ],
)
def test_a_store_in_the_jobs_folder_is_refused_with_the_fix(
    tmp_path: Path, spec_uri: str | None, environ_uri: str | None, source: str
) -> None:
    text = SPEC + (f"tracking: {{uri: '{spec_uri}'}}\n" if spec_uri else "")
    spec = parse_spec_text(text)
    environ = job_environ(**({"MLFLOW_TRACKING_URI": environ_uri} if environ_uri else {}))
    driver = job_side.JobDriver("caviar-iris-submit-abc123", tmp_path)
    with pytest.raises(job_side.JobStoreError) as raised:
        job_side.check_job_store(spec, driver, environ)
    message = str(raised.value)
    assert raised.value.exit_code == 2
    assert f"({source})" in message and "job's temporary working directory" in message
    assert "MLFLOW_TRACKING_URI" in message and "tracking.uri" in message
    assert "Ray job caviar-iris-submit-abc123" in message and "Nothing was trained" in message


@pytest.mark.parametrize(
    "environ_uri", ["http://127.0.0.1:5000", "https://mlflow.example", "sqlite:////data/m.db"]
)
def test_a_server_or_a_file_outside_the_jobs_folder_is_fine(
    tmp_path: Path, environ_uri: str
) -> None:
    driver = job_side.JobDriver("j", tmp_path / "job")
    job_side.check_job_store(
        parse_spec_text(SPEC), driver, job_environ(MLFLOW_TRACKING_URI=environ_uri)
    )


def test_the_driver_moves_to_a_private_copy_that_outlives_the_shared_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a second node's runtime-env agent does to the unpacked folder: delete it and
    unpack it again. The driver's current directory and files must not go with it."""
    shared = tmp_path / "working_dir_files" / "_ray_pkg_0123456789abcdef"
    (shared / "data").mkdir(parents=True)
    (shared / "iris.yaml").write_text(SPEC)
    (shared / "data" / "rows.csv").write_text("a,b\n1,2\n")
    monkeypatch.chdir(shared)
    monkeypatch.setattr(sys, "path", [str(shared), *sys.path])
    monkeypatch.setenv("PWD", str(shared))

    job_side.prepare_job_driver(
        parse_spec_text(SPEC + "tracking: {uri: 'http://m:5000'}\n"), job_environ()
    )

    here = Path.cwd()
    assert here.parent == shared.parent and here.name.startswith("caviar-driver-caviar-iris")
    assert sys.path[0] == str(here) and os.environ["PWD"] == str(here)
    shutil.rmtree(shared)
    shutil.copytree(here, shared)  # "unpacked again": the driver does not notice
    assert Path.cwd() == here and Path("data/rows.csv").read_text() == "a,b\n1,2\n"
    assert Path("iris.yaml").read_text() == SPEC


def test_outside_a_ray_job_nothing_happens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    job_side.prepare_job_driver(parse_spec_text(SPEC), {})  # sqlite:///mlflow.db is fine here
    assert Path.cwd() == tmp_path.resolve() and list(tmp_path.parent.glob("caviar-driver-*")) == []


def test_caviar_run_as_a_job_without_a_tracking_server_exits_2_before_starting_ray(
    tmp_path: Path,
) -> None:
    """The real command, in the environment Ray's job supervisor gives it."""
    (tmp_path / "iris.yaml").write_text(SPEC)
    environ = job_environ()
    # Any Ray this run started would leave its session folder under RAY_TMPDIR/ray.
    ray_root = Path(tempfile.mkdtemp(prefix="cv-", dir="/tmp"))  # short, as Ray's sockets need
    try:
        result = run_caviar(
            "run", "iris.yaml", cwd=tmp_path, timeout=120, RAY_TMPDIR=str(ray_root), **environ
        )
        assert result.returncode == 2, result.stdout + result.stderr
        assert "job's temporary working directory" in result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) < 8
        assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "caviar_runs").exists()
        assert not (ray_root / "ray").exists()  # Ray never started
    finally:
        shutil.rmtree(ray_root, ignore_errors=True)
