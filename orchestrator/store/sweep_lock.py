"""One driver per sweep: a lock its driver holds for as long as it runs.

Two drivers on one sweep (a second ``caviar run --resume`` while the first still trains) would
start every remaining trial twice and interleave the journal. The driver therefore holds an
exclusive ``flock`` on ``<storage>/<name>/.caviar.lock`` from before it chooses the sweep until
it has marked the sweep's end. The kernel drops the lock when its holder exits, however it
exits (SIGKILL included), so a lock is never stale: a sweep whose marker says ``running`` with
no holder was interrupted. The file names its holder (pid, host, start, sweep) for the message
a second driver gets; on a folder shared over NFS, Linux carries ``flock`` across clients.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from orchestrator.errors import CaviarError
from orchestrator.resume import resume_command

LOCK = ".caviar.lock"


class SweepRunning(CaviarError):
    """Another driver runs this sweep now."""

    exit_code = 2


@contextmanager
def sweep_lock(folder: Path, name: str, shown_spec: str) -> Iterator[None]:
    """Hold the lock of the sweeps under ``folder`` (one spec name's) for the block; raises
    :class:`SweepRunning`, naming the holder, when another driver holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SweepRunning(_running_message(name, _holder(fd), shown_spec)) from None
        _write_holder(fd)
        yield
    finally:
        os.close(fd)  # releases the lock


def _write_holder(fd: int) -> None:
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": round(time.time())}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
    except OSError:
        pass  # a full disk: the lock holds all the same; only the message loses its names


def _holder(fd: int) -> dict[str, Any]:
    try:
        return dict(json.loads(os.pread(fd, 4096, 0) or b"{}"))
    except (OSError, ValueError, TypeError):
        return {}


def _running_message(name: str, holder: dict[str, Any], shown_spec: str) -> str:
    who = ""
    if holder.get("pid"):
        since = time.strftime("%H:%M:%S", time.localtime(float(holder.get("since", 0))))
        who = f" (caviar, pid {holder['pid']} on {holder.get('host', '?')}, since {since})"
    return (
        f"sweep {name} is running now{who}: one driver per sweep.\n"
        f"  - wait for it to end, or stop it (Ctrl-C in its terminal, or kill -INT "
        f"{holder.get('pid', 'PID')});\n"
        f"  - then, if it was interrupted:  {resume_command(shown_spec)}"
    )
