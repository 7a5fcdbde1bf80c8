"""The service commands: what each service runs, built from its environment, secure by default."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.cluster import services
from orchestrator.cluster.services import ServiceConfigError

TOKEN = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "s3cret-token"}
REPO = Path(__file__).resolve().parents[2]


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_head_defaults_bind_loopback_and_block_in_the_foreground() -> None:
    argv = services.ray_head(TOKEN).argv
    assert argv[:4] == ["ray", "start", "--head", "--block"]
    assert flag(argv, "--dashboard-host") == "127.0.0.1"
    assert flag(argv, "--node-ip-address") == "127.0.0.1"
    assert flag(argv, "--port") == "6379" and flag(argv, "--dashboard-port") == "8265"
    assert "--disable-usage-stats" in argv


def test_head_takes_ports_resources_and_temp_dir_from_the_environment() -> None:
    env = {
        **TOKEN,
        "CAVIAR_RAY_PORT": "7000",
        "CAVIAR_DASHBOARD_PORT": "7001",
        "CAVIAR_DASHBOARD_HOST": "0.0.0.0",
        "CAVIAR_NUM_CPUS": "0",
        "CAVIAR_NUM_GPUS": "2",
        "CAVIAR_DASHBOARD_AGENT_PORT": "7002",
        "CAVIAR_METRICS_PORT": "7003",
        "CAVIAR_RAY_TEMP_DIR": "/tmp/x",
        "CAVIAR_NODE_IP": "auto",
    }
    argv = services.ray_head(env).argv
    assert flag(argv, "--port") == "7000" and flag(argv, "--dashboard-port") == "7001"
    assert flag(argv, "--dashboard-host") == "0.0.0.0"
    assert flag(argv, "--num-cpus") == "0" and flag(argv, "--num-gpus") == "2"
    assert flag(argv, "--dashboard-agent-listen-port") == "7002"
    assert flag(argv, "--metrics-export-port") == "7003"
    assert flag(argv, "--temp-dir") == "/tmp/x"
    assert "--node-ip-address" not in argv  # auto: Ray picks the container's address


def test_worker_needs_the_head_address() -> None:
    with pytest.raises(ServiceConfigError, match="CAVIAR_RAY_HEAD"):
        services.ray_worker(TOKEN)
    argv = services.ray_worker({**TOKEN, "CAVIAR_RAY_HEAD": "ray-head:6379"}).argv
    assert argv[:5] == ["ray", "start", "--address", "ray-head:6379", "--block"]
    assert "--head" not in argv and "--dashboard-host" not in argv


@pytest.mark.parametrize("service", ["ray-head", "ray-worker"])
def test_ray_refuses_to_start_open_or_without_a_token(service: str) -> None:
    base = {"CAVIAR_RAY_HEAD": "h:1"}
    with pytest.raises(ServiceConfigError, match="RAY_AUTH_MODE is not set"):
        services.build(service, base)
    with pytest.raises(ServiceConfigError, match="no token"):
        services.build(service, {**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": " "})
    services.build(service, {**base, "RAY_AUTH_MODE": "disabled"})  # said on purpose: allowed


def test_token_may_come_from_a_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)}
    with pytest.raises(ServiceConfigError, match="no token"):
        services.ray_head(env)
    token_file.write_text("abc\n")
    services.ray_head(env)


def test_no_secret_in_any_argv() -> None:
    env = {
        **TOKEN,
        "CAVIAR_RAY_HEAD": "h:1",
        "POSTGRES_HOST": "db",
        "POSTGRES_USER": "mlflow",
        "POSTGRES_PASSWORD": "pg-s3cret",
        "POSTGRES_DB": "mlflow",
    }
    for service in services.SERVICES:
        command = services.build(service, env)
        text = " ".join(command.argv) + command.describe()
        assert "s3cret" not in text, service


def test_mlflow_builds_the_postgres_uri_into_its_environment_quoting_the_password() -> None:
    env = {
        "POSTGRES_HOST": "postgres",
        "POSTGRES_USER": "ml flow",
        "POSTGRES_PASSWORD": "p@ss/w:rd",
        "POSTGRES_DB": "mlflow",
    }
    command = services.mlflow_server(env)
    uri = command.env["MLFLOW_BACKEND_STORE_URI"]
    assert uri == "postgresql+psycopg2://ml%20flow:p%40ss%2Fw%3Ard@postgres:5432/mlflow"
    assert "p%40ss" not in command.describe() and ":***@postgres" in command.describe()
    argv = command.argv
    assert not [a for a in argv if "postgresql" in a or "p@ss" in a or "p%40ss" in a], argv
    assert argv[:2] == ["mlflow", "server"] and "--serve-artifacts" in argv
    assert flag(argv, "--host") == "127.0.0.1" and flag(argv, "--port") == "5000"


def test_mlflow_needs_a_backend_store() -> None:
    with pytest.raises(ServiceConfigError, match="no MLflow backend store"):
        services.mlflow_server({})
    with pytest.raises(ServiceConfigError, match="POSTGRES_PASSWORD"):
        services.mlflow_server({"POSTGRES_HOST": "db", "POSTGRES_USER": "u", "POSTGRES_DB": "d"})
    uri = "sqlite:////data/mlflow.db"
    command = services.mlflow_server(
        {"MLFLOW_BACKEND_STORE_URI": uri, "CAVIAR_MLFLOW_WORKERS": "1"}
    )
    assert command.env["MLFLOW_BACKEND_STORE_URI"] == uri
    assert flag(command.argv, "--workers") == "1"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("CAVIAR_RAY_PORT", "http", "whole number"),
        ("CAVIAR_DASHBOARD_PORT", "70000", "port number"),
        ("CAVIAR_NUM_CPUS", "-1", ">= 0"),
    ],
)
def test_bad_settings_name_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(ServiceConfigError, match=f"{name}.*{message}"):
        services.ray_head({**TOKEN, name: value})


def test_health_urls_use_loopback_and_public_endpoints() -> None:
    env = {"CAVIAR_DASHBOARD_PORT": "1234", "CAVIAR_MLFLOW_HOST": "0.0.0.0"}
    assert services.health_url("ray-head", env) == "http://127.0.0.1:1234/api/gcs_healthz"
    assert services.health_url("ray-worker", {"CAVIAR_NODE_IP": "auto"}).endswith(
        "127.0.0.1:52365/api/healthz"
    )
    assert services.health_url("mlflow", env) == "http://127.0.0.1:5000/health"


def test_entrypoint_dry_run_and_errors_without_traceback() -> None:
    def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "orchestrator.cluster.services", *args],
            env={"PATH": "/usr/bin:/bin", **env},
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )

    ok = run("ray-head", "--dry-run", **TOKEN)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("ray start --head --block")
    bad = run("ray-worker", **TOKEN)
    assert bad.returncode == 2
    assert "CAVIAR_RAY_HEAD is not set" in bad.stderr and "Traceback" not in bad.stderr
    down = run("health", "ray-head", CAVIAR_DASHBOARD_PORT="1")
    assert down.returncode == 1


def test_mlflow_basic_auth_app_is_opt_in() -> None:
    from orchestrator.cluster.services import mlflow_server

    plain = mlflow_server({"MLFLOW_BACKEND_STORE_URI": "sqlite:///x.db"}).argv
    assert "--app-name" not in plain
    secured = mlflow_server(
        {"MLFLOW_BACKEND_STORE_URI": "sqlite:///x.db", "CAVIAR_MLFLOW_APP": "basic-auth"}
    ).argv
    assert secured[secured.index("--app-name") + 1] == "basic-auth"


def test_mlflow_artifact_root_instead_of_serving_artifacts() -> None:
    """caviar up: the server and its clients share one folder on one machine."""
    env = {"MLFLOW_BACKEND_STORE_URI": "sqlite:////s/mlflow.db"}
    served = services.mlflow_server(env).argv
    assert "--serve-artifacts" in served and "--default-artifact-root" not in served
    local = services.mlflow_server({**env, "CAVIAR_MLFLOW_ARTIFACT_ROOT": "/s/mlruns"}).argv
    assert local[local.index("--default-artifact-root") + 1] == "/s/mlruns"
    assert "--no-serve-artifacts" in local and "--serve-artifacts" not in local


def test_head_preloads_modules_into_every_worker() -> None:
    argv = services.ray_head({**TOKEN, "CAVIAR_RAY_PRELOAD_MODULES": "torch, a.b"}).argv
    config = json.loads(argv[argv.index("--system-config") + 1])
    assert config == {"preload_python_modules": ["torch", "a.b"]}
    assert "--system-config" not in services.ray_head(TOKEN).argv
