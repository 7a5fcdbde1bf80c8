"""Ray processes left behind by a `caviar run` that was killed, found and ended.

When a driver that started its own Ray dies without shutting it down (SIGKILL, a crash), Ray's
helper processes (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``, idle workers) notice their
raylet is gone only after about a minute. They slow nothing that follows (each embedded Ray has
its own session folder and ports), but they hold memory and show up in ``ps`` as if a sweep
were still running. caviar marks the processes of every Ray it starts with its driver's
identity (``OWNER_VARIABLE``: pid and start time, which the processes inherit), and the next
embedded start ends those whose driver is gone. Processes of any other Ray (a `ray start`
cluster, `caviar up`'s service, another user's) carry no such mark and are never touched.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator

import ray  # noqa: F401  (puts the psutil it vendors on the path)

OWNER_VARIABLE = "CAVIAR_RAY_OWNER"


@contextlib.contextmanager
def marked_as_owner() -> Iterator[None]:
    """This process's identity in the environment for the block (a Ray started in it inherits
    it); gone afterwards, so nothing else this driver starts is marked."""
    os.environ[OWNER_VARIABLE] = _identity(os.getpid()) or str(os.getpid())
    try:
        yield
    finally:
        os.environ.pop(OWNER_VARIABLE, None)


def end_orphans() -> list[int]:
    """SIGKILL every process marked by a caviar driver that no longer runs; returns their pids."""
    import psutil

    ended: list[int] = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        try:
            if not _looks_like_ray(process.info.get("cmdline") or []):
                continue
            owner = process.environ().get(OWNER_VARIABLE)
        except (psutil.Error, OSError):
            continue  # gone, or not ours to read
        if owner and not _alive(owner):
            with contextlib.suppress(OSError):
                os.kill(process.info["pid"], signal.SIGKILL)
                ended.append(process.info["pid"])
    return ended


def _looks_like_ray(cmdline: list[str]) -> bool:
    text = " ".join(cmdline)
    return text.startswith("ray::") or "/ray/" in text


def _identity(pid: int) -> str | None:
    """``pid:start time``: a pid reused by another process does not pass for the driver."""
    import psutil

    try:
        return f"{pid}:{psutil.Process(pid).create_time():.2f}"
    except psutil.Error:
        return None


def _alive(owner: str) -> bool:
    pid_text, _, _started = owner.partition(":")
    if not pid_text.isdigit():
        return True  # not a mark this code wrote: leave it alone
    return _identity(int(pid_text)) == owner if _started else _identity(int(pid_text)) is not None
