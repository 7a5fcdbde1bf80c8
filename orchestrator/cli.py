"""The ``caviar`` command: parses arguments and delegates; no logic of its own.

User errors (:class:`CaviarError`) are printed as one short message and an exit code (2 for a
bad spec, 1 otherwise); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from orchestrator.environment import apply_environment_defaults
from orchestrator.errors import CaviarError, SweepInterrupted


def main(argv: Sequence[str] | None = None) -> int:
    # Before anything imports Ray, Tune or MLflow (MLflow reads its telemetry switch on import).
    apply_environment_defaults()
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except SweepInterrupted as interrupted:  # not an error: the sweep can be resumed
        _exit_at_once_on_another_signal()
        print(f"caviar: {interrupted}", file=sys.stderr)
        _exit_now(interrupted.exit_code)
    except CaviarError as error:
        print(f"caviar: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:  # before a sweep began, or a second Ctrl-C while one cleans up
        _exit_at_once_on_another_signal()
        if args.command == "run":
            print(
                "\ncaviar: stopped at once; every trial result is in the sweep's journal, and "
                f"a resume sends MLflow what it lacks: caviar run {args.spec} --resume",
                file=sys.stderr,
            )
        else:
            print("\ncaviar: interrupted", file=sys.stderr)
        _exit_now(130)


def _exit_at_once_on_another_signal() -> None:
    """After an interruption, one more Ctrl-C or SIGTERM ends the process there and then
    (exit 130): everything a resume needs is already in the journal, and a second signal must
    not end in a traceback."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: os._exit(130))


def _exit_now(code: int) -> NoReturn:
    """End an interrupted run without the interpreter's exit handlers: the sweep's clean-up
    (MLflow's queue, Ray's shutdown) is done or was cut short on purpose, and a signal that
    lands while Python finalizes would otherwise kill the process instead of exiting 130."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="caviar",
        description="Caviar-style hyperparameter sweeps on Ray Tune, tracked in MLflow.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = commands.add_parser("validate", help="check a spec and summarise it")
    validate.add_argument("spec", type=Path, help="the sweep spec (YAML)")
    validate.set_defaults(handler=_validate)

    schema = commands.add_parser(
        "schema", help="print the spec's JSON Schema, or a trainable's parameters"
    )
    schema.add_argument(
        "--trainable",
        metavar="NAME",
        help="a registered name, package.module:NAME (this folder first) or an entry point",
    )
    schema.set_defaults(handler=_schema)

    run = commands.add_parser("run", help="run a sweep on this machine (or RAY_ADDRESS)")
    run.add_argument("spec", type=Path, help="the sweep spec (YAML)")
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue this spec's interrupted sweep (same MLflow runs, no duplicates)",
    )
    run.add_argument(
        "--no-service",
        action="store_true",
        help="run on a Ray of its own even when caviar up's service is running",
    )
    run.set_defaults(handler=_run)

    report = commands.add_parser(
        "report", help="plots and an HTML page for a sweep, read back from MLflow"
    )
    report.add_argument("sweep", help="an experiment name (its latest sweep) or a parent run id")
    report.add_argument(
        "--tracking-uri",
        help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)",
    )
    report.add_argument(
        "--out", type=Path, help="output folder (default: caviar_report_<experiment>)"
    )
    report.set_defaults(handler=_report)

    from orchestrator.cluster import commands as cli_cluster

    cli_cluster.add_commands(commands)
    from orchestrator.service import commands as cli_service

    cli_service.add_commands(commands)
    return parser


def _validate(args: argparse.Namespace) -> int:
    from orchestrator.spec.models import load_spec

    spec = load_spec(args.spec)
    from orchestrator.spec.data import check_data_files

    check_data_files(spec.data, args.spec.parent)  # exists; `run` checks the contents
    print(f"OK {spec.summary()}")
    return 0


def _schema(args: argparse.Namespace) -> int:
    from orchestrator.spec.models import json_schema, trainable_schema

    schema = json_schema() if args.trainable is None else trainable_schema(args.trainable)
    print(json.dumps(schema, indent=2))
    return 0


def _run(args: argparse.Namespace) -> int:
    from orchestrator.service import client

    service = client.choose(args.spec, args.no_service)  # `caviar up` running: the sweep goes there
    if service.note:
        print(service.note, flush=True)
    if service.socket is not None:
        print(client.describe(), flush=True)
        return client.run(service.socket, args.spec, args.resume)
    from orchestrator.spec.models import load_spec

    spec = load_spec(args.spec)  # before the heavy imports: a bad spec answers at once
    from orchestrator.spec.data import check_data_files

    check_data_files(spec.data, args.spec.parent)  # so does a missing data file
    from orchestrator.cluster.submit import prepare_job_driver

    prepare_job_driver(spec)  # as a Ray job: no store in its temp folder; leave the shared folder
    if not os.environ.get("RAY_ADDRESS"):  # and a trial too large for this machine
        from orchestrator.engine.capacity import refuse_on_this_machine

        refuse_on_this_machine(spec.resources.cpus_per_trial, spec.resources.gpus_per_trial)
    _exit_without_final_collection()
    from orchestrator.engine import raystart

    # Ray's start (seconds, mostly waiting on its processes) overlaps the imports below, the
    # data load and the MLflow parent run; run_sweep claims it where it needs Ray.
    raystart.start_in_background()
    try:
        from orchestrator.engine.run import run_sweep
        from orchestrator.report.summary import format_summary

        result = run_sweep(
            spec,
            args.spec.read_text(encoding="utf-8"),
            args.spec.name,
            spec_dir=args.spec.parent,
            resume=args.resume,
        )
    finally:
        raystart.discard()  # a no-op once run_sweep has claimed it
    print(format_summary(result))
    return 0 if result.best is not None else 1


def _report(args: argparse.Namespace) -> int:
    _exit_without_final_collection()
    from orchestrator.report.command import report_command

    page = report_command(args.sweep, args.tracking_uri, args.out)
    print(f"caviar: wrote {page}")
    return 0


def _exit_without_final_collection() -> None:
    """Skip the cyclic garbage collection of interpreter shutdown (seconds once torch, Ray and
    MLflow are loaded; docs/performance.md): at exit, move every object to the permanent
    generation first.

    Registered before the heavy imports, so it runs after their own exit handlers (LIFO).
    Nothing is lost: the process is ending, and no exit handler of theirs is skipped. Off with
    the other speed-ups (``CAVIAR_NO_SPEEDUPS``).
    """
    from orchestrator import speedups

    if speedups.enabled():
        atexit.register(gc.freeze)


if __name__ == "__main__":
    sys.exit(main())
