"""What ``caviar run`` and the service's driver say to each other over the driver's socket.

One JSON object per line, both ways. The client sends one request:
``{"ping": true}``, ``{"prestart": true}`` (``caviar up``, once its nodes have joined) or
``{"run": {...}}`` and then, while the sweep runs, at most ``{"interrupt": true}`` (its
Ctrl-C). The driver answers a ping or a prestart with ``{"ok": true, ...}`` and a run with
any number of ``{"out": TEXT, "err": BOOL}`` (the sweep's terminal output, as written) and
then one ``{"exit": CODE}``. The socket is a Unix socket in a 0700 folder, created 0600: only its
owner can reach the driver (which runs whatever trainable a spec names).
"""

from __future__ import annotations

import json
import socket
from typing import Any

MAX_LINE = 1 << 20
# Variables of the client's environment a sweep on the service honours, as a local run would.
FORWARDED_ENV = (
    "CAVIAR_STORAGE_PATH",
    "CAVIAR_TRACKING_FLUSH_TIMEOUT_S",
)  # a request is a few hundred bytes; anything longer is not ours


def send(conn: socket.socket, message: dict[str, Any]) -> None:
    conn.sendall(json.dumps(message).encode() + b"\n")


class Reader:
    """Messages from a socket, one per line; ``None`` at the end of the stream."""

    def __init__(self, conn: socket.socket) -> None:
        self.file = conn.makefile("rb")

    def next(self) -> dict[str, Any] | None:
        line = self.file.readline(MAX_LINE)
        if not line:
            return None
        message = json.loads(line)
        return message if isinstance(message, dict) else None
