"""How ``caviar panda adjust``, ``pause``, ``resume`` and ``stop`` in another shell reach a
running session.

The session's folder holds ``commands.jsonl``: each command is one JSON line, appended with a
single write (so two shells never interleave within a line) and carrying an id. The session
reads the lines it has not seen at each epoch boundary, applies or refuses each, and journals
the answer (``command`` events: ``applied`` or ``refused`` with the reason); the command that
sent it waits for that answer. A command line cut by a crash is ignored until it is whole.

A session is found by its MLflow parent run id: every session folder holds the sweep marker
(``caviar_sweep.json``) naming its run, under ``<storage>/<spec name>/panda/``.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.store.markers import SweepMarker, read_marker

if TYPE_CHECKING:
    from orchestrator.spec import SweepSpec

COMMANDS = "commands.jsonl"
PANDA_DIR = "panda"  # under <storage>/<spec name>/


@dataclass(frozen=True)
class Command:
    """``adjust`` (``changes``, optionally ``rewind_to``), ``pause``, ``resume``, ``toggle``
    (pause or resume, from the session's own terminal) or ``stop``, from a person."""

    kind: str
    changes: dict[str, Any] = field(default_factory=dict)
    rewind_to: int | None = None
    id: str = field(default_factory=lambda: secrets.token_hex(6))
    by: str = "user"


def send(folder: Path, command: Command) -> None:
    """Append ``command`` to the session's command file (one write, one line)."""
    line = json.dumps(
        {
            "id": command.id,
            "t": round(time.time(), 3),
            "kind": command.kind,
            "changes": command.changes,
            "rewind_to": command.rewind_to,
            "by": command.by,
        },
        separators=(",", ":"),
    )
    fd = os.open(folder / COMMANDS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


class Inbox:
    """The session's side: the commands appended since the last read, oldest first."""

    def __init__(self, folder: Path, seen: Iterable[str] = ()) -> None:
        self.path = folder / COMMANDS
        self._offset = 0
        self._seen = set(seen)  # ids answered before a resume

    def read(self) -> list[Command]:
        try:
            with self.path.open("rb") as file:
                file.seek(self._offset)
                data = file.read()
        except FileNotFoundError:
            return []
        whole = data[: data.rfind(b"\n") + 1]  # a line still being written waits
        self._offset += len(whole)
        commands = []
        for line in whole.decode().splitlines():
            try:
                raw = json.loads(line)
                command = Command(
                    str(raw["kind"]),
                    dict(raw.get("changes") or {}),
                    raw.get("rewind_to"),
                    str(raw["id"]),
                    str(raw.get("by", "user")),
                )
            except (ValueError, KeyError, TypeError):
                continue  # not a command (written by hand?): nothing to answer
            if command.id not in self._seen:
                self._seen.add(command.id)
                commands.append(command)
        return commands


def wait_for_answer(journal: Path, command_id: str, timeout_s: float) -> dict[str, Any] | None:
    """The session's ``command`` event for ``command_id``, or None after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    offset = 0
    while True:
        try:
            with journal.open("rb") as file:
                file.seek(offset)
                data = file.read()
        except FileNotFoundError:
            data = b""
        whole = data[: data.rfind(b"\n") + 1]
        offset += len(whole)
        for line in whole.decode().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("e") == "command" and event.get("id") == command_id:
                return event
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.1)


def storage_root(spec: SweepSpec) -> Path:
    """Where the spec's panda sessions live (beside its sweeps, ``storage.path``'s rule)."""
    return (Path(spec.storage_path()) / spec.name / PANDA_DIR).resolve()


def session_roots(extra: Iterable[Path] = ()) -> list[Path]:
    """Where sessions are looked for: given folders, ``$CAVIAR_STORAGE_PATH``, ./caviar_runs."""
    roots = [*extra]
    env = os.environ.get("CAVIAR_STORAGE_PATH")
    if env:
        roots.append(Path(env))
    roots.append(Path("caviar_runs"))
    return roots


def find_session(run_id: str, roots: Iterable[Path]) -> tuple[Path, SweepMarker] | None:
    """The folder and marker of the panda session whose MLflow parent run is ``run_id``."""
    for root in roots:
        for marker_file in sorted(root.glob(f"*/{PANDA_DIR}/*/caviar_sweep.json")):
            marker = read_marker(marker_file.parent)
            if marker is not None and marker.parent_run_id == run_id:
                return marker_file.parent, marker
    return None
