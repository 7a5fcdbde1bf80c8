"""``caviar up`` listens on loopback alone: every TCP socket its processes listen on.

The smallest service (one worker node with one CPU, no GPU, MLflow on a free port) in a state
folder of the test's own. Its processes are the ones ``services.json`` records and all their
descendants (Ray's GCS, raylets, agents, client server, monitor, dashboard and worker
processes, the MLflow server's uvicorn) and whatever carries the service's marker. Each of
their listening sockets, read from ``/proc/net/tcp`` and ``tcp6``, must be on 127.0.0.1 (or an
IPv6 socket bound to ``::ffff:127.0.0.1`` or ``::1``): before, Ray's GCS, raylet and worker
ports listened on every interface and the agents and the client server on the machine's address.
A sweep runs on the service too (its driver reaches the head at 127.0.0.1), and the sockets are
read again afterwards, when trial workers have started on the worker node.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run_caviar
from ports import free_port

from orchestrator.service.state import StateDir, marked_processes, marker

pytestmark = [pytest.mark.cluster, pytest.mark.integration]

SPEC = """
name: loopback
data: {source: iris, seed: 0}
space:
  learning_rate: {scale: log, low: 0.01, high: 0.5}
fixed: {epochs: 2, hidden_units: 8, layers: 1, batch_size: 32}
search: {num_trials: 2, seed: 0}
scheduler: {kind: fifo}
resources: {cpus_per_trial: 1, pack_size: 1}
"""
LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's st column


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("caviar-home")
    yield folder
    run_caviar("down", cwd=folder, CAVIAR_HOME=str(folder), timeout=120)
    for pid in marked_processes(marker(StateDir(folder).path, "")):
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(StateDir(folder).runtime_dir(), ignore_errors=True)


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's /proc")
def test_every_listening_socket_of_the_service_is_on_loopback(home: Path, tmp_path: Path) -> None:
    up = run_caviar(
        "up", "--workers", "1", "--cpus-per-worker", "1", "--gpus", "0",
        "--mlflow-port", str(free_port()),
        cwd=home, CAVIAR_HOME=str(home), timeout=240,
    )  # fmt: skip
    assert up.returncode == 0, up.stdout + up.stderr
    recorded = json.loads((home / "services.json").read_text())["processes"]
    ports = {
        f"{name}:{key}": port for name, r in recorded.items() for key, port in r["ports"].items()
    }

    # Ray's worker processes on the worker node (the driver's warm trial processes) listen too.
    deadline = time.monotonic() + 90
    while not _ray_workers(_listeners(home, recorded)) and time.monotonic() < deadline:
        time.sleep(1)
    before = _listeners(home, recorded)
    assert _ray_workers(before), _show(before)
    # Every recorded port was found among them (the scan sees the service's processes).
    found = {port for _, port, _, _ in before}
    assert {k: p for k, p in ports.items() if p not in found} == {}, _show(before)
    assert _exposed(before) == [], _show(before)

    # The nodes Ray knows are registered under 127.0.0.1, not the machine's address.
    token = (home / "auth_token").read_text().strip()
    nodes = _alive_nodes(recorded["ray-head"]["ports"]["dashboard"], token)
    assert sorted(n["node_ip"] for n in nodes) == ["127.0.0.1", "127.0.0.1"], nodes

    # The driver still reaches the head (at 127.0.0.1): a sweep runs on the service.
    (tmp_path / "spec.yaml").write_text(SPEC)
    ran = run_caviar("run", "spec.yaml", cwd=tmp_path, CAVIAR_HOME=str(home), timeout=240)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert ran.stdout.startswith("caviar: running on the service in"), ran.stdout
    after = _listeners(home, recorded)
    assert _exposed(after) == [], _show(after)

    stopped = run_caviar("down", cwd=home, CAVIAR_HOME=str(home), timeout=120)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr


# --- what listens where -------------------------------------------------------------------


def _listeners(home: Path, recorded: dict) -> list[tuple[str, int, int, str]]:
    """(address, port, pid, process name) of every listening TCP socket of the service."""
    pids = _descendants({int(r["pid"]) for r in recorded.values()})
    pids |= set(marked_processes(marker(StateDir(home).path, "")))
    owners: dict[int, int] = {}  # socket inode -> pid
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    owners.setdefault(int(link[8:-1]), pid)
        except OSError:  # gone, or a file descriptor closed while read
            continue
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], int(fields[9])
            if state == LISTEN and inode in owners:
                address, port = _address(local)
                pid = owners[inode]
                found.append((address, port, pid, _name(pid)))
    return sorted(set(found), key=lambda row: (row[2], row[1]))


def _address(field: str) -> tuple[str, int]:
    """``0100007F:1F90`` (IPv6: 32 hex digits), each 32-bit word in host order -> address, port."""
    hex_address, hex_port = field.split(":")
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    family = socket.AF_INET if len(words) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, words), int(hex_port, 16)


def _exposed(listeners: list[tuple[str, int, int, str]]) -> list[tuple[str, int, int, str]]:
    """The listeners reachable from another host: anything but loopback."""
    return [row for row in listeners if not _loopback(row[0])]


def _loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _ray_workers(listeners: list[tuple[str, int, int, str]]) -> list[str]:
    agents = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")
    return [name for *_, name in listeners if name.startswith("ray::") and name not in agents]


def _descendants(roots: set[int]) -> set[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found = {pid for pid in roots if pid in parents}
    grew = True
    while grew:
        children = {pid for pid, parent in parents.items() if parent in found} - found
        found |= children
        grew = bool(children)
    return found


def _name(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [a.decode(errors="replace") for a in argv if a][:3]
    return " ".join(words).strip() or "?"


def _show(listeners: list[tuple[str, int, int, str]]) -> str:
    return "\n".join(f"{a}:{port}  pid {pid}  {name[:100]}" for a, port, pid, name in listeners)


def _alive_nodes(dashboard_port: int, token: str) -> list[dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{dashboard_port}/api/v0/nodes?limit=100",
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        nodes = json.load(reply)["data"]["result"]["result"]
    return [n for n in nodes if n.get("state") == "ALIVE"]
