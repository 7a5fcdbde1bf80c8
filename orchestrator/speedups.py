"""The one switch over every speed-up that leans on another library's private internals.

Each such speed-up asks :func:`enabled` first. With ``CAVIAR_NO_SPEEDUPS=1`` they all stand
aside and caviar takes the library's public path, so a new Ray, MLflow or torch release that
changes an internal shows up as a failure of the test run made with the switch off (``make
test-no-speedups``: the pinned sweep and a packed one), and users have a way round it at once.
``trainables`` reads the same variable itself (it never imports ``orchestrator``).

The speed-ups, and what runs instead with the switch off:

- *Ray's node start without its monitors and API server* (``engine/raystart.py``:
  ``_without_monitors``, ``_without_api_server`` patch ``ray._private.parameter.RayParams``
  and ``ray._private.node.Node``): a plain ``ray.init``.
- *Packs' mailbox in Ray's key-value store* (``engine/mailbox.py``: ``KvMailbox`` over
  ``ray.experimental.internal_kv``): ``ActorMailbox``, a small Ray actor. Packs themselves
  use torch's public API only and stay on (``resources.pack_size`` decides them).
- *Warm workers* (``engine/warm.py: prestart_workers``: the raylet's ``PrestartWorkers`` RPC
  with Ray's private auth interceptor, and Tune's runtime environment from
  ``ray.tune.execution.class_cache``): none prestarted; each sweep starts its workers.
- *Preload* (``service/topology.py``: the head's ``preload_python_modules`` system config, which
  has every worker import torch and the trial actor): workers import them when a trial needs.
- *An embedded sweep's trial workers started with Ray* (``engine/raystart.py``:
  ``_trial_worker_config``, Ray's ``_system_config`` keys ``prestart_worker_first_driver``
  and ``preload_python_modules``, then the warm workers above, waited for by their process
  title ``ray::IDLE``): Ray starts its own idle workers, and the trials' workers start and
  import torch once the sweep has begun.
- *The embedded Ray's dashboard agent in its minimal form* (``engine/raystart.py``:
  ``_minimal_dashboard_agent`` patches ``ray._private.utils.get_dashboard_dependency_error``):
  the agent as Ray starts it, the driver importing the dashboard's web stack to decide.
- *Tune's trainable registry read once per sweep* (``engine/registry_cache.py`` patches
  ``ray.tune.registry._Registry``'s reads, forgetting them at every write): a round trip to
  Ray's key-value store per trial created and per trial actor started.
- *The newest waiting trial first* (``engine/trial_choice.py``, reading Tune's
  ``TuneController.get_trials``): Tune's own FIFO choice.
- *Many trials' MLflow writes in one transaction* (``store/bulk_sql.py``: MLflow's ORM models
  ``SqlRun``, ``SqlTag``, ``SqlParam``, ``SqlMetric``, ``SqlLatestMetric``, its validators and
  its store's session factory, reached through ``MlflowClient._tracking_client.store``): the
  public client, six store transactions per trial (``create_run``, ``log_batch``,
  ``set_terminated``). Beside it, the report's read of every trial's curve in one query per
  500 runs (``store/reader.py``'s ``metric_histories``, the store's
  ``get_metric_history_bulk``): ``get_metric_history`` per trial.
- *A new SQLite store from a migrated template* (``store/sqlite_seed.py``, MLflow's
  ``_initialize_tables`` and ``_verify_schema``): MLflow creates and migrates it itself.
- *torch's compiler import deferred* (``trainables/compiler_import.py``, torch's
  ``_disable_dynamo`` wrappers): torch's optimizers as they are.
- *The interpreter's collector* (``gc.freeze``: at exit, ``exit_without_final_collection``
  below, which the commands call; after the imports in ``service/driver.py``): Python's
  collection as usual.

Private uses that stay on with the switch off, because correctness or security needs them
and no public path exists (each says so where it is made):

- ``ray._raylet.Config.initialize`` (``raystart.refresh_ray_config``): Ray caches
  ``RAY_AUTH_MODE`` when imported; without the refresh an embedded Ray started after the
  import would run without the token caviar just set, its GCS port open on every interface.
- ``ray.init(_node_ip_address="127.0.0.1")`` (``raystart``): the embedded Ray on loopback;
  ``ray.init`` has no public argument for the address of a node it starts.
- ``ray._private.ray_constants`` / ``ray._private.services`` in ``cluster/services.py``'s
  ``JOIN_ON_LOOPBACK``: a ``caviar up`` worker node joins its head on 127.0.0.1 only; Ray's
  ``ray start`` otherwise refuses, or rebinds to the machine's address (README, Security).
- Logger names of Ray's private modules (``ray._private.worker``, ``ray.train._internal.
  syncer``, ``ray._private.runtime_env.*`` in ``engine/raystart.py``, ``engine/run.py`` and
  ``cluster/connection.py``): only quieted or filtered; if a name changes, a log line shows.
- ``store/local_store.py`` relies on MLflow keeping a database store, and its artifact root,
  for the life of the process (public calls, undocumented behaviour): the service's runs'
  artifacts land where its server keeps them.

Not private, so not behind the switch: SIGTERM's handler (``signal.signal``, the call Ray's
private ``set_sigterm_handler`` makes), removing a finished sweep's placement groups between
a service's sweeps (``ray.util.placement_group``, ``ray.PlacementGroupID``).
"""

from __future__ import annotations

import atexit
import gc
import os

SWITCH = "CAVIAR_NO_SPEEDUPS"


def enabled() -> bool:
    """True unless ``CAVIAR_NO_SPEEDUPS`` is set to anything but ``""`` or ``"0"``."""
    return os.environ.get(SWITCH, "") in ("", "0")


def exit_without_final_collection() -> None:
    """Skip the cyclic garbage collection of interpreter shutdown (seconds once torch, Ray and
    MLflow are loaded; docs/performance.md): at exit, move every object to the permanent
    generation first.

    Call it before the heavy imports, so it runs after their own exit handlers (LIFO).
    Nothing is lost: the process is ending, and no exit handler of theirs is skipped. Off with
    the other speed-ups (``CAVIAR_NO_SPEEDUPS``).
    """
    if enabled():
        atexit.register(gc.freeze)
