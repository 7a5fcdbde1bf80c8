"""Free loopback ports for the services tests start, chosen where nothing else will take them.

A port found free by binding port 0 comes from the kernel's ephemeral range, which every
outgoing connection also draws from: between choosing it and the service binding it (seconds
later, after a Ray head has opened hundreds of connections), it can be taken. CI saw a Ray
worker's agent lose such a race. Ports here come from 20000-32767 instead: above Ray's worker
ports (10002-19999) and below Linux's ephemeral range (32768-60999), and checked free now.
"""

from __future__ import annotations

import random
import socket

LOW, HIGH = 20000, 32767
_rng = random.Random()


def _bindable(port: int) -> bool:
    for host in ("127.0.0.1", "0.0.0.0"):  # noqa: S104 (a probe, closed at once)
        with socket.socket() as probe:
            try:
                probe.bind((host, port))
            except OSError:
                return False
    return True


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports that nothing listens on now, outside the ephemeral range."""
    chosen: list[int] = []
    while len(chosen) < count:
        port = _rng.randint(LOW, HIGH)
        if port not in chosen and _bindable(port):
            chosen.append(port)
    return chosen


def free_port() -> int:
    return free_ports(1)[0]
