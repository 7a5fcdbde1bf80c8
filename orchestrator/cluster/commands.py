"""The cluster commands of ``caviar`` (submit, status, logs, stop, jobs): parse and delegate.

The work is in :mod:`orchestrator.cluster.submit`, imported only when one of these commands runs, so
``caviar validate`` and ``caviar run`` never load Ray's job SDK.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

ADDRESS_HELP = "the head's job API, http://HOST:8265 (default: $RAY_ADDRESS)"


def add_commands(commands: Any) -> None:  # argparse's _SubParsersAction
    """Register the cluster subcommands; see ``orchestrator.cluster.submit`` for what they do."""
    submit = commands.add_parser("submit", help="run a sweep on a Ray cluster (Ray's job API)")
    submit.add_argument("spec", type=Path, help="the sweep spec (YAML); its folder is uploaded")
    _address(submit)
    submit.add_argument("--follow", action="store_true", help="stream the log until it ends")
    submit.add_argument(
        "--resume",
        action="store_true",
        help="finish this spec's interrupted sweep on the cluster (caviar run SPEC --resume)",
    )
    submit.set_defaults(handler=_submit)

    status = commands.add_parser("status", help="show a submitted job's state")
    status.add_argument("job", help="the job id that submit printed")
    _address(status)
    status.set_defaults(handler=_status)

    logs = commands.add_parser("logs", help="print a submitted job's log")
    logs.add_argument("job", help="the job id that submit printed")
    _address(logs)
    logs.add_argument("--follow", action="store_true", help="keep streaming until the job ends")
    logs.set_defaults(handler=_logs)

    stop = commands.add_parser("stop", help="stop a submitted job")
    stop.add_argument("job", help="the job id that submit printed")
    _address(stop)
    stop.set_defaults(handler=_stop)

    jobs = commands.add_parser("jobs", help="list the jobs submitted to a cluster")
    _address(jobs)
    jobs.set_defaults(handler=_jobs)


def _address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", default=None, help=ADDRESS_HELP)


def _submit(args: argparse.Namespace) -> int:
    from orchestrator.cluster import submit as cluster

    return cluster.submit(args.spec, args.address, args.follow, resume=args.resume)


def _status(args: argparse.Namespace) -> int:
    from orchestrator.cluster import submit as cluster

    return cluster.status(args.job, args.address)


def _logs(args: argparse.Namespace) -> int:
    from orchestrator.cluster import submit as cluster

    return cluster.logs(args.job, args.address, args.follow)


def _stop(args: argparse.Namespace) -> int:
    from orchestrator.cluster import submit as cluster

    return cluster.stop(args.job, args.address)


def _jobs(args: argparse.Namespace) -> int:
    from orchestrator.cluster import submit as cluster

    return cluster.jobs(args.address)
