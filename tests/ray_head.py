"""A throwaway Ray head started the way Ray's docs start one (`ray start --head`), on free
loopback ports, and every process of it ended afterwards (those that outlive their group
too: they still name its temporary folder)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from conftest import clean_env
from ports import free_ports


@dataclass
class PlainHead:
    gcs_port: int
    process: subprocess.Popen[bytes]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"


@contextlib.contextmanager
def plain_ray_head(log_dir: Path, num_cpus: int = 1) -> Iterator[PlainHead]:
    gcs_port, agent_port, dashboard_port = free_ports(3)
    # short: Ray's socket paths under it must fit AF_UNIX's 107 bytes
    temp_dir = Path(tempfile.mkdtemp(prefix="cv-", dir="/tmp"))
    log = log_dir / "head.log"
    head = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={gcs_port}",
            f"--num-cpus={num_cpus}",
            "--include-dashboard=false",
            f"--dashboard-port={dashboard_port}",
            f"--dashboard-agent-listen-port={agent_port}",
            f"--temp-dir={temp_dir}",
            "--disable-usage-stats",
        ],
        env=clean_env(RAY_AUTH_MODE="disabled"),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait_for_gcs(gcs_port, head, log)
        yield PlainHead(gcs_port, head)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=5)  # a throwaway head: no need to wait out Ray's own grace
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(head.pid, signal.SIGKILL)
        kill_processes_naming(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for_gcs(
    port: int, head: subprocess.Popen[bytes], log: Path, timeout_s: float = 180
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert head.poll() is None, "ray start --head exited:\n" + log.read_text()[-3000:]
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                time.sleep(3)  # the raylet registers just after the GCS listens
                return
        time.sleep(0.5)
    raise AssertionError(f"ray start --head did not listen on {port} in {timeout_s} s")


def kill_processes_naming(folder: Path) -> None:
    """Ray processes that outlived their group (the raylet's workers) still name the folder."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(folder) in cmdline:
            with contextlib.suppress(OSError):
                os.kill(int(pid), signal.SIGKILL)
