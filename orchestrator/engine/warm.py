"""A driver that stays connected to a running cluster, with trial workers started ahead.

``caviar up``'s driver (``orchestrator/service/driver.py``) runs sweep after sweep in one
process. What a cold ``caviar run`` pays before its first trial, it pays once here: the
imports (:func:`import_sweep_modules`), the connection to Ray (:func:`connect`), and the trial
workers' start. Tune gives every sweep new actors, and an actor's process ends with it, so
before each sweep the driver asks every node's raylet to start idle Python workers for this
driver's job (:func:`prestart_workers`); the cluster's head preloads torch and the trial actor
into every worker it starts (``CAVIAR_RAY_PRELOAD_MODULES``), so an actor placed on such a
worker is ready in a fraction of a second instead of the seconds a process start and those
imports take (docs/performance.md).

Ray 2.60 has no public call for the prestart (later releases add
``prestart_workers_on_local_node``); this uses the raylet's own ``PrestartWorkers`` RPC, with
the token the driver already holds, and like every speed-up on a private API it stands aside
under ``CAVIAR_NO_SPEEDUPS`` and on any failure (the sweep then starts its workers, as a cold
one does).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import ray

from orchestrator import speedups
from orchestrator.environment import apply_environment_defaults

log = logging.getLogger(__name__)

KEEP_ALIVE_S = 24 * 3600  # an idle prestarted worker is kept this long (Ray's own limit)

# Imported once by the driver so no sweep pays for them: the engine (Ray Tune, torch), the
# store (MLflow), the data readers, the report (matplotlib, scikit-learn's forest).
SWEEP_MODULES = (
    "orchestrator.engine.run",
    "orchestrator.report.page",
    "orchestrator.report.summary",
    "orchestrator.search.importance",
    "orchestrator.spec.data",
    "sklearn.datasets",
    "mlflow.pytorch",
)


def connect(timeout_s: float = 120.0) -> None:
    """Join the cluster in ``RAY_ADDRESS`` for the life of the process (token from the
    environment), waiting for its head to come up (``caviar up`` starts both at once)."""
    import time

    apply_environment_defaults()
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ray.init(log_to_driver=False, logging_level="WARNING")
            return
        except ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def import_sweep_modules() -> None:
    import importlib

    for name in SWEEP_MODULES:
        try:
            importlib.import_module(name)
        except ImportError as error:  # an optional piece missing costs its import later
            log.warning("caviar: could not import %s ahead (%s)", name, error)


def release_sweep_resources() -> int:
    """Remove every placement group this driver's job still holds, and with them their actors.

    Call it between sweeps (the driver runs one at a time, so every group of its job belongs
    to the sweep that just ended). A local ``caviar run`` never needs this, since its Ray shuts
    down; here, trial actors Tune was still starting when its run ended (or when Ctrl-C cut
    it short) kept their groups and CPUs, and the next sweep's trials waited for them forever.
    Returns how many groups were removed.
    """
    from ray.util.placement_group import (
        PlacementGroup,
        placement_group_table,
        remove_placement_group,
    )

    job = ray.get_runtime_context().get_job_id()
    removed = 0
    for group_id, info in placement_group_table().items():
        # A placement group's id ends with its job's id.
        if info.get("state") == "REMOVED" or not str(group_id).endswith(job):
            continue
        remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(group_id)))
        removed += 1
    return removed


def prestart_workers() -> int:
    """Ask every alive node with CPUs for as many idle workers as it has CPUs (and GPUs).

    Returns how many were asked for. Idle workers beyond that are Ray's to reap; workers
    already idle count towards the raylet's own limit, so calling this again is harmless.
    """
    if not speedups.enabled():
        return 0
    try:
        import grpc
        from ray._private.authentication.grpc_authentication_client_interceptor import (
            SyncAuthenticationMetadataClientInterceptor,
        )
        from ray.core.generated import common_pb2, node_manager_pb2, node_manager_pb2_grpc

        job_id = bytes.fromhex(ray.get_runtime_context().get_job_id())
        asked = 0
        for node in ray.nodes():
            count = int(node.get("Resources", {}).get("CPU", 0))
            if not node.get("Alive") or count < 1:
                continue
            address = f"{node['NodeManagerAddress']}:{node['NodeManagerPort']}"
            with grpc.insecure_channel(address) as channel:
                stub = node_manager_pb2_grpc.NodeManagerServiceStub(
                    grpc.intercept_channel(channel, SyncAuthenticationMetadataClientInterceptor())
                )
                stub.PrestartWorkers(
                    node_manager_pb2.PrestartWorkersRequest(
                        language=common_pb2.PYTHON,
                        job_id=job_id,
                        runtime_env_info=_trial_runtime_env_info(),
                        keep_alive_duration_secs=KEEP_ALIVE_S,
                        num_workers=count,
                    ),
                    timeout=10,
                )
            asked += count
        return asked
    except Exception as error:  # only the speed-up is lost
        log.warning("caviar: could not prestart trial workers (%s)", error)
        return 0


def _trial_runtime_env_info() -> Any:
    """The runtime environment Tune gives every trial actor, as the raylet matches it.

    A prestarted worker only takes an actor of the same job and runtime environment; Tune
    creates its actors with ``runtime_env={"env_vars": ...}`` built by its class cache from
    these constants and the driver's environment (``ray.tune.execution.class_cache``)."""
    from ray._private.utils import get_runtime_env_info
    from ray.runtime_env import RuntimeEnv
    from ray.tune.execution import class_cache

    env_vars = dict(class_cache.DEFAULT_ENV_VARS)
    for name in class_cache.ENV_VARS_TO_PROPAGATE:
        if name in os.environ:
            env_vars[name] = os.environ[name]
    return get_runtime_env_info(RuntimeEnv(env_vars=env_vars), is_job_runtime_env=False)
