"""The ``caviar`` command: parses arguments and delegates; no logic of its own.

User errors (:class:`CaviarError`) are printed as one short message and an exit code (2 for a
bad spec, 1 otherwise); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from orchestrator import speedups
from orchestrator.environment import apply_environment_defaults
from orchestrator.errors import CaviarError, SweepInterrupted

if TYPE_CHECKING:  # the results a command prints; their modules load only where it runs
    from orchestrator.panda.command import PandaResult
    from orchestrator.panda.revisit import RevisitResult
    from orchestrator.sweep_result import SweepResult


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
            from orchestrator.resume import resume_command

            print(
                "\ncaviar: stopped at once; every trial result is in the sweep's journal, and "
                f"a resume sends MLflow what it lacks: {resume_command(str(args.spec))}",
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
    schema.add_argument(
        "--spec",
        type=Path,
        metavar="PATH",
        help="a spec file (its trainable, from its folder) or a folder to look up --trainable in",
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

    _add_panda(commands)

    revisit = commands.add_parser(
        "revisit",
        help="re-train a past sweep's top configurations on today's data; compare the ranks",
    )
    revisit.add_argument("sweep", help="an experiment name (its latest sweep) or a parent run id")
    revisit.add_argument("--top", type=int, default=5, help="how many of the best (default 5)")
    revisit.add_argument(
        "--tracking-uri",
        help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)",
    )
    revisit.set_defaults(handler=_revisit)

    from orchestrator.cluster import commands as cli_cluster

    cli_cluster.add_commands(commands)
    from orchestrator.service import commands as cli_service

    cli_service.add_commands(commands)
    return parser


def _add_panda(commands: argparse._SubParsersAction) -> None:
    """``caviar panda``: one model, babysat (README, "Panda mode"). Its three forms take
    different arguments, so the rest of the line is parsed by the form's own parser."""
    panda = commands.add_parser(
        "panda",
        help="train one model and adjust it as it trains "
        "(adjust/pause/resume/stop it from another shell)",
        usage="caviar panda SPEC [--set NAME=VALUE ...] [--epochs N] [--resume]\n"
        "       caviar panda --from RUN_ID [--epochs N] [--tracking-uri URI]\n"
        "       caviar panda --replay RUN_ID [--tracking-uri URI]\n"
        "       caviar panda adjust RUN_ID [NAME=VALUE ...] [--rewind-to EPOCH] [--wait S]\n"
        "       caviar panda pause|resume|stop RUN_ID [--wait S]",
    )
    panda.add_argument("target", nargs="?", metavar="SPEC|adjust|pause|resume|stop")
    panda.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    # Options given before SPEC land here; after it, in `rest` (parsed by _panda_form).
    panda.add_argument(
        "--from",
        dest="from_run",
        metavar="RUN_ID",
        help="continue a sweep trial (or a sweep's best) from its checkpoint; "
        "--epochs then counts the epochs added",
    )
    panda.add_argument(
        "--replay",
        dest="replay_run",
        metavar="RUN_ID",
        help="train a PBT trial's schedule (or a PBT sweep's best) again from scratch, as "
        "one model",
    )
    panda.add_argument("--epochs", type=int, help=argparse.SUPPRESS)
    panda.add_argument("--tracking-uri", help=argparse.SUPPRESS)
    panda.set_defaults(handler=_panda)


def _panda_form(target: str) -> argparse.ArgumentParser:
    """The parser of one form of ``caviar panda``."""
    if target in ("adjust", "pause", "resume", "stop"):
        form = argparse.ArgumentParser(prog=f"caviar panda {target}")
        form.add_argument("run_id", help="the session's MLflow parent run id (printed at start)")
        if target == "adjust":
            form.add_argument("changes", nargs="*", metavar="NAME=VALUE")
            form.add_argument(
                "--rewind-to",
                type=int,
                metavar="EPOCH",
                help="go back to this epoch's checkpoint of the current branch first",
            )
        form.add_argument("--wait", type=float, default=120.0, help="seconds to wait for it")
        form.add_argument("--tracking-uri", help="the MLflow store (to find the session)")
        return form
    form = argparse.ArgumentParser(prog="caviar panda SPEC")
    form.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a starting value (over fixed and the middle of each space range)",
    )
    form.add_argument("--epochs", type=int, help="the epoch budget (default: the spec's)")
    form.add_argument(
        "--resume", action="store_true", help="continue this spec's interrupted session"
    )
    return form


def _panda(args: argparse.Namespace) -> int:
    from orchestrator.panda.changes import PandaError, parse_assignments

    if args.replay_run is not None:
        if args.target is not None or args.from_run is not None:
            raise PandaError("--replay takes the PBT trial's run id alone; drop the rest")
        return _panda_from(args, replay=True)
    if args.from_run is not None:
        if args.target is not None:
            raise PandaError("--from takes the trial's run id instead of a spec; give one")
        return _panda_from(args)
    if args.target is None:
        raise PandaError("give a spec (caviar panda SPEC) or --from RUN_ID")
    form = _panda_form(args.target).parse_intermixed_args(args.rest)
    if args.target in ("pause", "resume", "stop"):
        from orchestrator.panda.command import stop_command

        return stop_command(form.run_id, form.wait, form.tracking_uri, kind=args.target)
    if args.target == "adjust":
        from orchestrator.panda.command import adjust_command

        changes = parse_assignments(form.changes)
        return adjust_command(form.run_id, changes, form.rewind_to, form.wait, form.tracking_uri)
    from orchestrator.spec import load_spec

    spec_path = Path(args.target)
    spec = load_spec(spec_path)
    sets = parse_assignments(form.sets)
    if form.resume and (sets or form.epochs is not None or args.epochs is not None):
        raise PandaError("--resume continues the session as it was; drop --set and --epochs")
    from orchestrator.spec.data import check_data_files

    check_data_files(spec.data, spec_path.parent)
    if not os.environ.get("RAY_ADDRESS"):
        from orchestrator.engine.capacity import refuse_on_this_machine

        refuse_on_this_machine(spec.resources.cpus_per_trial, spec.resources.gpus_per_trial)
    speedups.exit_without_final_collection()  # before the heavy imports (its docstring)
    from orchestrator.engine.on_ray import run_on_ray

    def session() -> PandaResult:
        from orchestrator.panda.command import run_panda

        return run_panda(
            spec,
            spec_path.read_text(encoding="utf-8"),
            spec_path.name,
            spec_dir=spec_path.parent,
            sets=sets,
            epochs=form.epochs if form.epochs is not None else args.epochs,
            resume=form.resume,
        )

    run_on_ray(session, _panda_summary)
    return 0


def _panda_from(args: argparse.Namespace, replay: bool = False) -> int:
    """``caviar panda --from RUN_ID``: a sweep's trial continued as a panda session
    (``--replay RUN_ID``: a PBT trial's schedule trained again from scratch)."""
    speedups.exit_without_final_collection()  # before the heavy imports (its docstring)
    from orchestrator.engine.on_ray import run_on_ray
    from orchestrator.panda.origin import continue_from
    from orchestrator.panda.replay import replay_from

    if args.tracking_uri:  # where the trial is, and (unless its spec names one) the session
        os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri
    if replay:
        if args.epochs is not None:
            from orchestrator.panda.changes import PandaError

            raise PandaError("--replay trains the trial's own epochs; drop --epochs")
        origin = replay_from(args.replay_run, args.tracking_uri, Path.cwd())
    else:
        origin = continue_from(args.from_run, args.tracking_uri, args.epochs, Path.cwd())

    def session() -> PandaResult:
        from orchestrator.panda.command import run_panda

        return run_panda(
            origin.spec, origin.spec_text, origin.spec_filename, Path.cwd(), origin=origin
        )

    run_on_ray(session, _panda_summary)
    return 0


def _panda_summary(result: PandaResult) -> str:
    from orchestrator.panda.summary import format_summary

    return format_summary(result)


def _revisit(args: argparse.Namespace) -> int:
    speedups.exit_without_final_collection()  # before the heavy imports (its docstring)
    from orchestrator.engine.on_ray import run_on_ray

    def revisiting() -> RevisitResult:
        from orchestrator.panda.command import ray_trainer
        from orchestrator.panda.revisit import revisit
        from orchestrator.store.uri import tracking_uri

        return revisit(
            args.sweep, args.top, tracking_uri(args.tracking_uri), ray_trainer, Path.cwd()
        )

    def summary(result: RevisitResult) -> str:
        from orchestrator.panda.revisit import format_revisit

        return format_revisit(result)

    run_on_ray(revisiting, summary)
    return 0


def _validate(args: argparse.Namespace) -> int:
    from orchestrator.spec import load_spec

    spec = load_spec(args.spec)
    from orchestrator.spec.data import check_data_files

    check_data_files(spec.data, args.spec.parent)  # exists; `run` checks the contents
    from orchestrator.store.uri import check_store

    check_store(spec.tracking_uri())  # credentials in its address, an unwritable SQLite folder
    print(f"OK {spec.summary()}")
    return 0


def _schema(args: argparse.Namespace) -> int:
    from orchestrator.spec import schema_for

    schema = schema_for(args.trainable, args.spec)
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
    from orchestrator.spec import load_spec

    spec = load_spec(args.spec)  # before the heavy imports: a bad spec answers at once
    from orchestrator.spec.data import check_data_files

    check_data_files(spec.data, args.spec.parent)  # so does a missing data file
    from orchestrator.cluster.job_driver import prepare_job_driver

    prepare_job_driver(spec)  # as a Ray job: no store in its temp folder; leave the shared folder
    from orchestrator.store.uri import check_store

    check_store(spec.tracking_uri())  # a store that cannot work, refused before Ray starts
    if not os.environ.get("RAY_ADDRESS"):  # and a trial too large for this machine
        from orchestrator.engine.capacity import refuse_on_this_machine

        refuse_on_this_machine(spec.resources.cpus_per_trial, spec.resources.gpus_per_trial)
    speedups.exit_without_final_collection()  # before the heavy imports (its docstring)
    from orchestrator.engine.on_ray import run_on_ray

    def sweep() -> SweepResult:
        from orchestrator.engine.run import run_sweep

        return run_sweep(
            spec,
            args.spec.read_text(encoding="utf-8"),
            args.spec.name,
            spec_dir=args.spec.parent,
            resume=args.resume,
            draw_later=True,
        )

    def summary(result: SweepResult) -> str:
        from orchestrator.report.summary import format_summary

        return format_summary(result)

    result = run_on_ray(sweep, summary, trial_workers=True)
    if result.draw_report is not None:  # the plots onto the parent run, the summary already out
        result.draw_report()
    return 0 if result.best is not None else 1


def _report(args: argparse.Namespace) -> int:
    speedups.exit_without_final_collection()
    from orchestrator.report.command import report_command

    page = report_command(args.sweep, args.tracking_uri, args.out)
    print(f"caviar: wrote {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
