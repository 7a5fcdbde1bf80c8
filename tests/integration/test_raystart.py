"""The embedded Ray a sweep starts: a working cluster without the monitors and the dashboard's
API server it cannot use."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import clean_env

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

START = """
import json
import ray
from ray._private import node as ray_node, parameter
from orchestrator import raystart

before = parameter.RayParams.__init__
api_server_before = ray_node.Node.start_api_server
raystart.prepare_environment()
raystart.init_ray()

@ray.remote
def square(x):
    return x * x

node = ray._private.worker._global_node
print(json.dumps({
    "processes": sorted(node.all_processes),
    "squares": ray.get([square.remote(i) for i in range(4)]),
    "restored": parameter.RayParams.__init__ is before,
    "api_server_restored": ray_node.Node.start_api_server is api_server_before,
    "dashboard_url": ray.get_runtime_context().get_node_id() and node.webui_url,
}))
ray.shutdown()
"""


def test_a_local_cluster_starts_without_the_monitors_and_the_api_server() -> None:
    out = subprocess.run(
        [sys.executable, "-c", START],
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    started = json.loads(out.stdout.strip().splitlines()[-1])
    assert started["squares"] == [0, 1, 4, 9]
    assert {"gcs_server", "raylet"} <= set(started["processes"])
    assert not {"monitor", "log_monitor", "dashboard"} & set(started["processes"]), started[
        "processes"
    ]
    assert started["dashboard_url"] is None  # Ray knows it has no dashboard
    assert started["restored"] and started["api_server_restored"]
