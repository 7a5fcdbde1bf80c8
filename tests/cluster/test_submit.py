"""Submitting without a cluster: addresses, tokens, what a cluster cannot run, what is uploaded,
and the errors a user meets before any job exists."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from conftest import run_caviar
from ray._private.runtime_env.packaging import create_package
from ray.job_submission import JobDetails, JobStatus

from orchestrator import cluster
from orchestrator.cluster import ClusterAuthError, ClusterError
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
    assert cluster.resolve_address("http://h:8265/", {}) == "http://h:8265"
    assert cluster.resolve_address(None, {"RAY_ADDRESS": "10.0.0.5:8265"}) == "http://10.0.0.5:8265"
    assert cluster.resolve_address("https://h", {"RAY_ADDRESS": "http://x"}) == "https://h"
    with pytest.raises(ClusterError, match="no cluster address.*--address"):
        cluster.resolve_address(None, {})
    with pytest.raises(ClusterError, match="not a job API address"):
        cluster.resolve_address("ray://h:10001", {})


def test_token_comes_from_the_environment_or_a_file(tmp_path: Path) -> None:
    assert cluster.auth_headers({}) == {}
    assert cluster.auth_headers({"RAY_AUTH_TOKEN": " t0k "}) == {"Authorization": "Bearer t0k"}
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    headers = cluster.auth_headers({"RAY_AUTH_TOKEN_PATH": str(token_file)})
    assert headers == {"Authorization": "Bearer from-file"}
    with pytest.raises(ClusterAuthError, match="RAY_AUTH_TOKEN_PATH=.*cannot be read"):
        cluster.auth_headers({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")})


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
    from orchestrator.sweep import storage_path

    shared = {"CAVIAR_STORAGE_PATH": "/shared/caviar_runs"}
    assert storage_path(parse_spec_text(SPEC), {}) == "caviar_runs"
    assert storage_path(parse_spec_text(SPEC), shared) == "/shared/caviar_runs"
    explicit = parse_spec_text(spec_with("storage: {path: /mine}\n"))
    assert storage_path(explicit, shared) == "/mine"


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
    assert request.runtime_env["env_vars"] == {"PYTHONUNBUFFERED": "1"}
    assert "must-not-travel" not in repr(request) and "laptop.db" not in repr(request)
    assert "/myenv" in request.runtime_env["excludes"]


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


def test_build_request_refuses_a_local_store_before_any_network(tmp_path: Path) -> None:
    spec = tmp_path / "local.yaml"
    spec.write_text(spec_with("tracking: {uri: 'sqlite:///mlflow.db'}\n"))
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
