"""The Ray that `caviar run` starts for itself (no RAY_ADDRESS, no service) is reachable from
this machine only: every server of it (GCS, raylet, agents, workers) listens on loopback.

A real embedded start in a child process, as `caviar run` does it (the environment applied by
the CLI's entry point before Ray is imported, then ``raystart.ensure_ray``), with a task run
on it; then every listening TCP socket of that process and its descendants is read."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys

import pytest
from conftest import clean_env

pytestmark = pytest.mark.integration

CHILD = """
import json, os
from orchestrator.environment import apply_environment_defaults
apply_environment_defaults()  # what `caviar`'s main does first
from orchestrator.engine import raystart
import psutil, ray
raystart.ensure_ray()

@ray.remote
def one():
    return 1

assert ray.get(one.remote()) == 1
pids = {p.pid for p in psutil.Process().children(recursive=True)} | {os.getpid()}
listening = sorted(
    {(c.laddr.ip, psutil.Process(c.pid).name()) for c in psutil.net_connections("tcp")
     if c.status == psutil.CONN_LISTEN and c.pid in pids}
)
ray.shutdown()
print(json.dumps(listening))
"""


def _loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def test_the_ray_caviar_run_starts_listens_on_loopback_only() -> None:
    env = clean_env(RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    out = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    listening = json.loads(out.stdout.strip().splitlines()[-1])
    names = {name for _, name in listening}
    assert {"gcs_server", "raylet"} <= names, listening  # the servers were there to be seen
    exposed = [row for row in listening if not _loopback(row[0])]
    assert not exposed, exposed
