"""Starting Ray for a sweep, optionally on a background thread.

``ray.init`` takes seconds, most of them spent waiting for the GCS and the raylet to come up.
``caviar run`` begins it on a thread right after the spec is checked, so the wait overlaps the
driver's heavy imports (torch, Tune, MLflow), the data load and the MLflow parent run's
creation; ``run_sweep`` then claims the started Ray where it used to start it. Anything that
fails before the claim (a bad data file, an unreachable store) shuts the unclaimed Ray down
again, and an error raised by ``ray.init`` itself reaches the caller at the claim, exactly
where a synchronous start would have raised it.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import ray

from orchestrator import speedups
from orchestrator.engine import ray_orphans, warm
from orchestrator.environment import apply_environment_defaults

START_ATTEMPTS = 3  # an embedded start that timed out is tried again, this many times in all
IDLE_WORKER = "ray::IDLE"  # the process title of a Ray worker that holds no task or actor

# What the trial workers of an embedded sweep import before Tune asks for them (the service's
# head preloads the same, ``service/topology.py``): the trial actor and, with it, torch.
TRIAL_PRELOAD = ("torch", "orchestrator.engine.trial_actor")

# What ray.init logs when it runs off the main thread (it then skips its SIGTERM handler,
# which start_in_background installs itself).
_NOT_MAIN_THREAD_WARNING = "SIGTERM handler is not set"


def prepare_environment() -> None:
    """caviar's environment defaults (Ray's processes inherit them), and token auth for an
    embedded cluster (none when joining the one in ``RAY_ADDRESS``).

    The embedded cluster's GCS port listens on every interface, so it must not run open: token
    auth with a fresh token per sweep, held only in this process tree's environment (nothing
    is written to ~/.ray, which would change `ray start` for good).
    """
    apply_environment_defaults()
    if os.environ.get("RAY_ADDRESS"):
        return
    if os.environ.setdefault("RAY_AUTH_MODE", "token") == "token":
        os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    refresh_ray_config()


def refresh_ray_config() -> None:
    """Make an already imported Ray see the auth settings just put in the environment.

    Ray reads ``RAY_AUTH_MODE`` into a cached config when it is imported; Ray's own
    ``_enable_token_auth`` refreshes it the same way. A private call that stays on with
    ``CAVIAR_NO_SPEEDUPS`` (``orchestrator/speedups.py`` says why): without it the embedded
    cluster would start without the token this module just set.
    """
    from ray._raylet import Config

    Config.initialize("")


def init_ray(trial_workers: bool = False) -> None:
    """Join the cluster in ``RAY_ADDRESS`` if there is one, else start Ray on loopback.

    With ``trial_workers`` an embedded Ray starts the sweep's trial workers at once, already
    importing what a trial needs (:func:`_trial_worker_config`). Call
    :func:`prepare_environment` first.
    """
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=False, logging_level="WARNING")
        return
    ray_orphans.end_orphans()  # of earlier caviar drivers that were killed
    with ray_orphans.marked_as_owner():  # what Ray starts now inherits the mark
        _start_embedded(trial_workers)


def _start_embedded(trial_workers: bool = False) -> None:
    system_config = _trial_worker_config() if trial_workers else {}
    for attempt in range(1, START_ATTEMPTS + 1):
        before = _children()
        try:
            with _without_monitors():
                ray.init(
                    # A new Ray of this sweep's own, even when `ray start` left a cluster
                    # running on this machine (a bare ray.init() would join it): only
                    # RAY_ADDRESS joins a cluster.
                    address="local",
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level="WARNING",
                    _node_ip_address="127.0.0.1",
                    _system_config=system_config or None,
                )
            if system_config:
                # In Tune's runtime environment; a failure only warns.
                _wait_for_idle_workers(warm.prestart_workers())
            return
        except Exception as error:
            # Ray gives its raylet a fixed 30 s to register; on a machine busy with other work
            # that can pass while nothing is wrong, so the start is tried afresh.
            if attempt == START_ATTEMPTS or "timed out during startup" not in str(error):
                raise
            ray.shutdown()
            for process in _children() - before:  # what the failed start left running
                with contextlib.suppress(Exception):  # psutil.Error: it is already gone
                    process.kill()


def _trial_worker_config() -> dict[str, Any]:
    """Ray's system config for a sweep's own Ray: every worker it starts imports
    :data:`TRIAL_PRELOAD` before its first task, and it starts none of its own accord.

    An embedded Ray otherwise starts one idle worker per CPU as the driver connects, in the
    job's runtime environment; Tune's trial actors ask for another (``engine/warm.py``), so
    those workers were started, left idle and reaped while the trials' own workers started
    and imported torch only once the sweep had begun. Instead :func:`_start_embedded` asks
    for one worker per CPU in Tune's runtime environment right after the start, and their
    process start and imports overlap the driver's own imports, data and MLflow parent. A
    speed-up on Ray's private system config: off with ``CAVIAR_NO_SPEEDUPS`` (Ray's own
    idle workers then start as before).
    """
    if not speedups.enabled():
        return {}
    return {
        "prestart_worker_first_driver": False,
        "preload_python_modules": list(TRIAL_PRELOAD),
    }


WORKERS_REGISTER_S = 5.0  # how long the start waits for its warm workers to come up


def _wait_for_idle_workers(
    count: int,
    timeout_s: float = WORKERS_REGISTER_S,
    children: Callable[[], set[Any]] = lambda: _children(),
    clock: Callable[[], float] = time.monotonic,
) -> bool:
    """Wait until ``count`` of Ray's workers are up (named ``ray::IDLE``, which a worker calls
    itself as it connects to the raylet), at most ``timeout_s``; True if they are.

    The start is claimed only after this, so Tune asks for its trial actors once the warm
    workers can take them: a lease that arrives while they are still starting makes the
    raylet start another worker, which imports torch beside the first trials and is reaped
    idle. Past the timeout the start goes on as it would have (the speed-up is lost, nothing
    else).
    """
    deadline = clock() + timeout_s
    while count > 0:
        idle = 0
        for process in children():
            with contextlib.suppress(Exception):  # psutil.Error: it is already gone
                idle += process.name() == IDLE_WORKER
        if idle >= count:
            return True
        if clock() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _children() -> set[Any]:
    import psutil  # Ray vendors it, importable once ray is imported (above)

    return set(psutil.Process().children(recursive=True))


@contextlib.contextmanager
def _without_monitors() -> Iterator[None]:
    """``ray.init`` of a local cluster without its autoscaler monitor and its log monitor.

    A one-machine sweep has nothing to autoscale, and with ``log_to_driver=False`` nobody
    reads what the log monitor would stream; each is a Python process that imports Ray and
    polls, and together they lengthen ``ray.init`` (docs/performance.md) and take a core's
    worth of CPU while the driver and the first trial workers start. ``ray.init`` has no
    argument for them, so its node parameters get ``no_monitor`` and ``include_log_monitor``
    (``ray start`` has them) for the duration of the call; if Ray's parameters ever stop
    taking them, the start goes ahead with both monitors, as before.
    """
    from ray._private import parameter

    if not speedups.enabled():
        yield
        return
    original = parameter.RayParams.__init__
    accepted = inspect.signature(original).parameters
    if not {"no_monitor", "include_log_monitor"} <= set(accepted):
        yield
        return

    def lean(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("no_monitor", True)
        kwargs.setdefault("include_log_monitor", False)
        original(self, *args, **kwargs)

    parameter.RayParams.__init__ = lean  # type: ignore[method-assign]
    try:
        with _without_api_server(), _minimal_dashboard_agent():
            yield
    finally:
        parameter.RayParams.__init__ = original  # type: ignore[method-assign]


@contextlib.contextmanager
def _without_api_server() -> Iterator[None]:
    """``ray.init`` without the dashboard's API server process.

    With ``include_dashboard=False`` Ray 2.60 still starts ``dashboard.py`` with only its
    usage-stats module (off here) and then polls, inside ``ray.init``, until that Python
    process has imported its web stack and published its address: seconds on the critical
    path of a sweep's start, and a core's worth of CPU while the driver and the first trial
    workers start. An embedded sweep uses neither the dashboard nor the job API (``caviar
    submit`` talks to a cluster started by ``ray start``, which this does not touch). Ray
    already treats a head node without a web UI address as having no dashboard. If Ray's
    node stops having this method, the start goes ahead with the server, as before.
    """
    from ray._private import node

    original = getattr(node.Node, "start_api_server", None)
    if original is None or not speedups.enabled():
        yield
        return

    def skipped(self: Any, **kwargs: Any) -> None:
        self._webui_url = None

    node.Node.start_api_server = skipped  # type: ignore[method-assign]
    try:
        yield
    finally:
        node.Node.start_api_server = original  # type: ignore[method-assign]


@contextlib.contextmanager
def _minimal_dashboard_agent() -> Iterator[None]:
    """``ray.init`` with the raylet's dashboard agent in its minimal form.

    The raylet always starts a dashboard agent; Ray starts it ``--minimal`` (its gRPC
    server, without the HTTP server, metrics export and reporter modules) when the
    dashboard's optional dependencies are missing, which it finds out by importing them
    (aiohttp, opencensus, prometheus_client...) in the driver. An embedded sweep has no
    dashboard to feed, so both the driver's import and the full agent's (a Python process
    importing its web stack while the driver and the first trial workers start) are skipped:
    the check answers "missing" for the duration of the call. If Ray stops having the check,
    the agent starts in full, as before.
    """
    from ray._private import utils as ray_utils

    original = getattr(ray_utils, "get_dashboard_dependency_error", None)
    if original is None:
        yield
        return
    ray_utils.get_dashboard_dependency_error = lambda: ImportError(  # type: ignore[assignment]
        "caviar: an embedded sweep's Ray has no dashboard"
    )
    try:
        yield
    finally:
        ray_utils.get_dashboard_dependency_error = original  # type: ignore[assignment]


class _BackgroundStart:
    """``ray.init`` on a thread that then stays parked for the rest of the process.

    The thread must never end: Ray starts the GCS, the raylet and its agents with
    ``PR_SET_PDEATHSIG`` (they die with their parent), and on Linux the "parent" is the
    thread that forked them. A daemon thread parked on an event lives exactly as long as the
    process, which is what the main thread gives a synchronous start.
    """

    def __init__(self, trial_workers: bool) -> None:
        self.error: BaseException | None = None
        self.trial_workers = trial_workers
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="caviar-ray-init", daemon=True)

    def _run(self) -> None:
        try:
            init_ray(self.trial_workers)
        except BaseException as error:  # handed to whoever claims or discards the start
            self.error = error
        finally:
            self.done.set()
        threading.Event().wait()  # parked for good: Ray's processes are this thread's children

    def wait(self) -> None:
        self.done.wait()
        _worker_log.removeFilter(_drop_thread_warning)


def _drop_thread_warning(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(_NOT_MAIN_THREAD_WARNING)


def _sigterm(signum: int, frame: FrameType | None) -> None:
    """SIGTERM (``caviar stop``, ``ray job stop``, a scheduler's kill) ends a sweep as Ctrl-C
    does: interrupted and resumable, its MLflow runs closed by the ``finally`` blocks."""
    raise KeyboardInterrupt(f"signal {signum}")


_worker_log = logging.getLogger("ray._private.worker")
# Process-wide on purpose, as Ray's own connection is (``ray.init`` starts or joins one Ray per
# process): ``caviar``'s command begins the start before its heavy imports, and ``run_sweep``
# takes it over much later through ``ensure_ray()``, with no handle passed between them (a
# library caller that never begins a start gets a synchronous one there). Invariant: at most
# one start is pending; ``claim`` or ``discard`` sets this back to None before returning, on
# the main thread, so a second ``start_in_background`` after either starts afresh.
_pending: _BackgroundStart | None = None


def start_in_background(trial_workers: bool = False) -> None:
    """Begin ``ray.init`` on a thread; :func:`claim` waits for it, :func:`discard` undoes it.

    ``trial_workers``: the command runs a sweep, whose trial workers an embedded Ray starts
    at once (:func:`init_ray`). Call it on the main thread. Nothing happens when Ray is
    already initialized or a start is already under way.
    """
    global _pending
    if _pending is not None or ray.is_initialized():
        return
    prepare_environment()
    # ray.init installs a SIGTERM handler only when called on the main thread (and logs a
    # warning otherwise); caviar's own makes SIGTERM an interruption, like Ctrl-C. (Ray's
    # private set_sigterm_handler is this very call on every platform caviar runs on.)
    signal.signal(signal.SIGTERM, _sigterm)
    _worker_log.addFilter(_drop_thread_warning)
    _pending = _BackgroundStart(trial_workers)
    _pending.thread.start()


def claim() -> bool | None:
    """Wait for the background start, if there is one, and take it over.

    Returns None when no start was begun (the caller starts Ray itself), True once Ray is up
    (the caller owns it and shuts it down); re-raises what ``ray.init`` raised.
    """
    global _pending
    started, _pending = _pending, None
    if started is None:
        return None
    started.wait()
    if started.error is not None:
        raise started.error
    return True


def discard() -> None:
    """Shut down a background start nobody claimed (the sweep failed before it needed Ray)."""
    global _pending
    started, _pending = _pending, None
    if started is None:
        return
    started.wait()
    if started.error is None:
        ray.shutdown()


def ensure_ray() -> bool:
    """Join the cluster in ``RAY_ADDRESS`` if there is one, else start Ray on loopback.

    True when this process started (so owns) Ray. A command that began the start on a thread
    before its heavy imports (:func:`start_in_background`) claims it here, and whatever
    ``ray.init`` raised is raised here, as if it had been called now.
    """
    claimed = claim()
    if claimed is not None:
        return claimed
    if ray.is_initialized():
        return False
    prepare_environment()  # token auth for an embedded cluster
    init_ray()
    return True
