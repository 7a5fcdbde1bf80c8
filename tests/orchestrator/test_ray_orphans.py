"""Ray processes a killed `caviar run` left behind are ended by the next embedded start; any
other process, Ray's or not, is left alone (tested on stand-in processes named like Ray's)."""

from __future__ import annotations

import os
import subprocess
import time

from orchestrator.engine.ray_orphans import OWNER_VARIABLE, end_orphans, marked_as_owner


def _stand_in(owner: str | None) -> subprocess.Popen[bytes]:
    """A process named like Ray's dashboard agent, marked by ``owner`` (or unmarked)."""
    env = {k: v for k, v in os.environ.items() if k != OWNER_VARIABLE}
    if owner is not None:
        env[OWNER_VARIABLE] = owner
    return subprocess.Popen(["bash", "-c", "exec -a ray::DashboardAgent sleep 120"], env=env)


def _dead_driver() -> str:
    import psutil  # Ray's vendored copy, on the path once ray is imported (by ray_orphans)

    gone = subprocess.Popen(["true"])
    started = psutil.Process(gone.pid).create_time()
    gone.wait()
    return f"{gone.pid}:{started:.2f}"


def test_only_the_processes_of_a_dead_caviar_driver_are_ended() -> None:
    with marked_as_owner():
        alive_owner = os.environ[OWNER_VARIABLE]
    assert OWNER_VARIABLE not in os.environ  # nothing started later is marked
    orphan = _stand_in(_dead_driver())
    ours = _stand_in(alive_owner)  # this test's process: alive
    unmarked = _stand_in(None)  # a Ray caviar did not start
    try:
        time.sleep(0.5)  # exec'd under their new names
        ended = end_orphans()
        assert orphan.wait(timeout=10) == -9
        assert ended == [orphan.pid]
        assert ours.poll() is None and unmarked.poll() is None
    finally:
        for process in (orphan, ours, unmarked):
            process.kill()
            process.wait()
