"""``caviar run``'s side of the service: is it there, and if so, run the sweep on it.

The client imports nothing heavy (no Ray, torch or MLflow): it reads the spec's ``tracking``
section, finds the driver's socket in the state folder, sends the request and prints what
the driver writes until the exit code arrives. So the time from the command to the first
trial is the interpreter's start plus the warm driver's work (docs/performance.md).

The service is used unless something names another place to run or to log: ``RAY_ADDRESS``
(another cluster), ``MLFLOW_TRACKING_URI`` or the spec's ``tracking.uri`` (another store),
or ``caviar run --no-service``; and only when its driver runs the same caviar as this command
(version and a hash of the code, ``identity.py``: a service started from another checkout, or
before an upgrade, would run the sweep on other code). Then, and when no service is up,
``caviar run`` runs as it always did, on a Ray of its own, and its first line says why.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from orchestrator.service import identity, wire
from orchestrator.service.state import StateDir

PING_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Choice:
    """Where ``caviar run`` goes: ``socket`` set means the service; ``note`` is said first."""

    socket: Path | None
    note: str | None = None


def choose(spec_path: Path, no_service: bool = False, state: StateDir | None = None) -> Choice:
    if no_service or os.environ.get("RAY_ADDRESS"):
        return Choice(None)
    state = state or StateDir()
    records = state.read()
    if not records or not records.processes:
        return Choice(None)
    elsewhere = _store_named(spec_path)
    if elsewhere:
        return Choice(
            None,
            f"caviar: the service in {state.path} is up, but {elsewhere} names another "
            "store: running on a Ray of its own",
        )
    answer = ping(state.socket_path)
    if answer is None:
        return Choice(
            None,
            f"caviar: the service in {state.path} is not answering (caviar ps says why, "
            "caviar up restarts it): running on a Ray of its own",
        )
    theirs, mine = answer.get("caviar"), identity.code_identity()
    if theirs != mine:
        return Choice(
            None,
            f"caviar: the service in {state.path} runs other caviar code "
            f"({identity.describe(theirs)}; this caviar: {identity.describe(mine)}): running "
            "this sweep on a Ray of its own (caviar down, then caviar up, serves this code)",
        )
    return Choice(state.socket_path)


def _store_named(spec_path: Path) -> str | None:
    """What names a tracking store other than the service's, if anything does."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return "MLFLOW_TRACKING_URI"
    import yaml

    from orchestrator.spec.yaml_text import load_yaml

    try:  # the spec loader's own reading: bounded however the spec nests or aliases
        data = load_yaml(spec_path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, RecursionError, ValueError):
        return None  # the driver's spec check reports it, with its path
    tracking = data.get("tracking") if isinstance(data, dict) else None
    if isinstance(tracking, dict) and tracking.get("uri"):
        return "the spec's tracking.uri"
    return None


def ping(socket_path: Path, timeout_s: float = PING_TIMEOUT_S) -> dict[str, Any] | None:
    """The driver's answer to a ping, or None when nobody answers on ``socket_path``."""
    return ask(socket_path, {"ping": True}, timeout_s)


def ask(socket_path: Path, request: dict[str, Any], timeout_s: float) -> dict[str, Any] | None:
    """One request, one answer; None when nobody answers."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout_s)
            conn.connect(str(socket_path))
            wire.send(conn, request)
            return wire.Reader(conn).next()
    except (OSError, ValueError):
        return None


def run(
    socket_path: Path,
    spec_path: Path,
    resume: bool,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Send the sweep to the driver and relay its output; returns the sweep's exit code.

    Ctrl-C asks the driver to interrupt the sweep (it ends resumable, as a local one); a
    second Ctrl-C leaves at once, and the driver finishes the clean-up on its own."""
    out, err = out or sys.stdout, err or sys.stderr
    request = {
        "run": {
            # as typed: the driver works in "cwd", and what it suggests (`--resume`) names it so
            "spec": str(spec_path),
            "cwd": os.getcwd(),
            "resume": resume,
            "tty": bool(out.isatty()),
            "env": {k: os.environ[k] for k in wire.FORWARDED_ENV if k in os.environ},
        }
    }
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(str(socket_path))
    interrupts = 0

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts > 1:
            print("\ncaviar: left the sweep's clean-up to the service", file=err, flush=True)
            os._exit(130)
        try:
            wire.send(conn, {"interrupt": True})
        except OSError:
            os._exit(130)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        wire.send(conn, request)
        reader = wire.Reader(conn)
        while True:
            try:
                message = reader.next()
            except InterruptedError:
                continue
            if message is None:
                print("caviar: error: the service's driver went away mid-sweep", file=err)
                return 1
            if "exit" in message:
                return int(message["exit"])
            stream = err if message.get("err") else out
            stream.write(str(message.get("out", "")))
            stream.flush()
    finally:
        signal.signal(signal.SIGINT, previous)
        conn.close()


def describe(state: StateDir | None = None) -> str:
    """The first line of a ``caviar run`` on the service."""
    state = state or StateDir()
    records = state.read()
    settings = records.settings if records else {}
    ports = settings.get("ports", {})
    gcs = ports.get("ray-head", {}).get("gcs")
    mlflow = ports.get("mlflow", {}).get("mlflow")
    return (
        f"caviar: running on the service in {state.path} (Ray 127.0.0.1:{gcs}, MLflow "
        f"http://127.0.0.1:{mlflow}; caviar run --no-service runs on a Ray of its own)"
    )
