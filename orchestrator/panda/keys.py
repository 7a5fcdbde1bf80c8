"""Changes typed in the session's own terminal, sent exactly as another shell sends them.

When ``caviar panda`` runs in a terminal, each line typed is a command, applied at the next
epoch boundary through the session's command file (so it is journaled and answered like
``caviar panda adjust``):

- ``learning_rate=0.01 momentum=0.8`` (or ``lr=0.01``): adjust;
- ``rewind 12 lr=0.01``: back to epoch 12's checkpoint, then adjust;
- ``p``: pause at the next epoch boundary, or, paused, go on (``pause``/``resume`` also work);
- ``stop``: end the session.

Lines, not single keys: the terminal stays in its own line mode, so what is typed can be
corrected before Enter, and the reading thread never holds up the training loop.

A line that does not parse is answered at once with the reason and sends nothing.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import TextIO

from orchestrator.panda.changes import PandaError, parse_assignments
from orchestrator.panda.control import Command, send

HELP = "type NAME=VALUE ... | rewind EPOCH [NAME=VALUE ...] | p (pause/resume) | stop, then Enter"


def parse_line(line: str) -> Command | None:
    """A typed line as a command; None for an empty line; PandaError when it does not parse."""
    words = line.split()
    if not words:
        return None
    if words == ["stop"]:
        return Command("stop")
    if words in (["p"], ["pause"], ["resume"]):
        return Command({"p": "toggle"}.get(words[0], words[0]))
    if words[0] == "rewind":
        if len(words) < 2 or not words[1].isdigit():
            raise PandaError("rewind needs an epoch: rewind 12 [NAME=VALUE ...]")
        return Command("adjust", parse_assignments(words[2:]), int(words[1]))
    return Command("adjust", parse_assignments(words))


def listen(folder: Path, stdin: TextIO | None = None, out: TextIO | None = None) -> None:
    """Read lines from ``stdin`` on a daemon thread for the life of the process."""
    source, sink = stdin or sys.stdin, out or sys.stderr

    def loop() -> None:
        for line in source:
            try:
                command = parse_line(line)
            except PandaError as error:
                print(f"caviar: {error} ({HELP})", file=sink, flush=True)
                continue
            if command is not None:
                send(folder, command)

    threading.Thread(target=loop, name="caviar-panda-keys", daemon=True).start()
