"""A command that needs Ray, run one way: ``caviar run``, ``caviar panda`` (and ``--from``) and
``caviar revisit``.

Ray's start (seconds, mostly waiting on its processes) begins in the background first, so it
overlaps the command's heavy imports, its data load and its MLflow parent run; the work claims
the started Ray where it needs it (``raystart.ensure_ray``). A start the work never claimed
(it failed before it needed Ray) is discarded however the work ends. The summary is printed
only once the work has returned.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from orchestrator.engine import raystart

R = TypeVar("R")


def run_on_ray(
    work: Callable[[], R], summary: Callable[[R], str], trial_workers: bool = False
) -> R:
    """``work()`` with Ray starting beside it, then ``summary(result)`` printed; returns the
    result (for what the command does after its summary). ``work`` does its heavy imports
    itself, so Ray's start overlaps them. ``trial_workers``: the work is a sweep, whose trial
    workers an embedded Ray starts (and warms) at once, beside the same imports."""
    raystart.start_in_background(trial_workers)
    try:
        result = work()
    finally:
        raystart.discard()  # a no-op once the work has claimed it
    print(summary(result), flush=True)
    return result
