"""Loopback ports for the service: the well-known one when it is free, else a free one.

Ports drawn at random come from 20000-32767: above Ray's worker ports (10002-19999) and below
Linux's ephemeral range (32768-60999), from which every outgoing connection also draws (a port
found free there can be taken before the service binds it)."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterable

LOW, HIGH = 20000, 32767


def bindable(port: int) -> bool:
    """Nothing listens on ``port`` on loopback or on every interface."""
    for host in ("127.0.0.1", "0.0.0.0"):  # noqa: S104 (a probe, closed at once)
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError:
                return False
    return True


def listening(port: int, host: str = "127.0.0.1") -> bool:
    """Something accepts connections on ``host:port``."""
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def pick(preferred: int | None, taken: Iterable[int] = ()) -> int:
    """``preferred`` if it is free (and not already given out), else a free random port."""
    avoid = set(taken)
    if preferred is not None and preferred not in avoid and bindable(preferred):
        return preferred
    rng = random.Random()
    while True:
        port = rng.randint(LOW, HIGH)
        if port not in avoid and bindable(port):
            return port


def pick_many(count: int, taken: Iterable[int] = ()) -> list[int]:
    chosen = list(taken)
    for _ in range(count):
        chosen.append(pick(None, chosen))
    return chosen[len(chosen) - count :]
