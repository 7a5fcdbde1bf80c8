"""The environment caviar's driver sets before it imports Ray, Tune or MLflow.

One list, applied by the entry points, never on import: ``caviar``'s ``main`` first of all
(MLflow reads its telemetry switch when it is imported), and again where Ray starts
(``raystart.prepare_environment``, ``run_sweep``), because Ray's processes, and so the trial
workers, inherit the driver's environment as it is then; Ray and Tune read their variables
when called. A program that uses caviar as a library and imports MLflow itself applies it
first. A variable the user set wins (``setdefault``).
"""

from __future__ import annotations

import os

ENVIRONMENT_DEFAULTS = {
    # No traffic leaves the machine.
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    # caviar keeps its own records and MLflow: no CSV/JSON/TensorBoard file per result.
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    # caviar resumes from its journal, never with Tune's restore, so Tune's periodic snapshots
    # of the experiment's state are written and never read: at most one an hour (Tune still
    # writes those it forces, and its last). Its default ("auto") spends up to 5% of the
    # driver's loop on them.
    "TUNE_GLOBAL_CHECKPOINT_S": "3600",
    # Ctrl-C reaches caviar as KeyboardInterrupt. Tune's own handler would end the run as if
    # it had finished (and print a Tuner.restore hint a caviar user cannot follow); caviar
    # ends the sweep as interrupted, resumable with `caviar run SPEC --resume`.
    "TUNE_DISABLE_SIGINT_HANDLER": "1",
    # Ray prints every failed task result nobody read as "Unhandled error" with its
    # traceback; in a sweep those are Tune's own (a checkpoint that failed to save on a full
    # disk printed one per trial). caviar tells each failed trial in one line instead.
    "RAY_IGNORE_UNHANDLED_ERRORS": "1",
    # A tracking server that is away fails a write fast; caviar's writer retries it later.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    # MLflow prints "View run trial-024 at: URL" and "View experiment at: URL" on stdout each
    # time a run ends against a tracking server, in the driver and in every trial worker: the
    # sweep's own progress and summary (with its links) are what the user reads.
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    # What importing scikit-learn sets; set before Ray starts (possibly before that import)
    # so the workers see the same environment either way.
    "KMP_DUPLICATE_LIB_OK": "True",
    "KMP_INIT_AT_FORK": "FALSE",
    # A SIGTERM (`caviar stop JOB`, `ray job stop`, `kill`, `caviar down`) is an interruption
    # caviar handles like Ctrl-C; Ray's core worker would first print it as a crash
    # (`*** SIGTERM received ... PC: @ 0x...`, absl's failure signal handler, in the driver and
    # every worker). Crashes still print a stack: Ray enables Python's faulthandler in them.
    "RAY_DISABLE_FAILURE_SIGNAL_HANDLER": "1",
}


# Ray's switch for a node on loopback alone: off ("0"), every server of a Ray started here
# (GCS, raylet, agents, workers) listens on 127.0.0.1 only, and a driver reaches such a node by
# 127.0.0.1. Ray reads it when it is imported, so it is set before that.
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def apply_environment_defaults() -> None:
    for name, value in ENVIRONMENT_DEFAULTS.items():
        os.environ.setdefault(name, value)
    if not os.environ.get("RAY_ADDRESS"):
        # No cluster named: Ray is the one `caviar run` starts (or `caviar up`'s, on loopback
        # too), and is reachable from this machine only. With the switch on, the embedded
        # Ray's servers listened on every interface. A cluster in RAY_ADDRESS is left as is:
        # its nodes must reach the driver at the machine's address.
        os.environ.setdefault(LOCAL_ONLY_ENV, "0")
