"""The service commands of ``caviar`` (up, down, ps): parse and delegate to ``up.py``,
``stop.py`` and ``status.py``."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_commands(commands: Any) -> None:  # argparse's _SubParsersAction
    up = commands.add_parser(
        "up",
        help="start Ray and an MLflow server on this machine, kept up between sweeps",
        description="Start (in the background) a Ray head, Ray workers, an MLflow server with "
        "its UI and a warm sweep driver; caviar run then uses them. State in $CAVIAR_HOME "
        "(default ~/.caviar).",
    )
    up.add_argument("--workers", type=int, help="Ray worker nodes (default 1)")
    up.add_argument(
        "--cpus-per-worker", type=int, help="CPUs each worker offers trials (default: all)"
    )
    up.add_argument("--gpus", type=int, help="GPUs each worker offers (default: Ray detects)")
    up.add_argument("--mlflow-port", type=int, help="the MLflow server's port (default 5000)")
    up.add_argument(
        "--backend-store-uri",
        help="MLflow's store (default sqlite:///$CAVIAR_HOME/mlflow/mlflow.db), e.g. "
        "postgresql://USER@HOST/DB (a password belongs in ~/.pgpass, not here)",
    )
    up.add_argument("--status", action="store_true", help="show what runs (as caviar ps)")
    up.set_defaults(handler=_up)

    down = commands.add_parser("down", help="stop everything caviar up started")
    down.set_defaults(handler=_down)

    ps = commands.add_parser("ps", help="show the service's processes, since when, their logs")
    ps.set_defaults(handler=_ps)


def _up(args: argparse.Namespace) -> int:
    from orchestrator.service import up
    from orchestrator.service.status import status

    if args.status:
        return status(sys.stdout)
    options = up.UpOptions(
        workers=args.workers,
        cpus_per_worker=args.cpus_per_worker,
        gpus=args.gpus,
        mlflow_port=args.mlflow_port,
        backend_store_uri=args.backend_store_uri,
    )
    return up.up(options, sys.stdout)


def _down(args: argparse.Namespace) -> int:
    from orchestrator.service.stop import down

    return down(sys.stdout)


def _ps(args: argparse.Namespace) -> int:
    from orchestrator.service.status import status

    return status(sys.stdout)
