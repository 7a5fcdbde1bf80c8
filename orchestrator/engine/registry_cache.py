"""Tune's trainable registry read once per sweep, not once per trial (a speed-up).

Tune checks that the sweep's trainable is registered as it creates each trial
(``validate_trainable``), and reads the class back, unpickling it, as it starts each trial
actor (``get_trainable_cls``). Each is a round trip to Ray's GCS key-value store from the
driver's loop: about a millisecond of the driver's CPU per trial on a sweep of 1024 one-epoch
trials (docs/performance.md, "Driver CPU per trial").

With :func:`install`, the driver keeps what a read found: that a key is there, and the value
read. Every write to the registry in this process (``register``, ``unregister``,
``flush_values``; Tune registers the trainable anew with every Tuner) forgets all of it first,
so a read never answers with what a write replaced. The registry's keys carry the Ray job's
id, so another driver's registry is never read from this one's cache.

It patches Ray's private ``ray.tune.registry._Registry``: listed in ``orchestrator/speedups.py``,
off with ``CAVIAR_NO_SPEEDUPS=1`` (Tune's own reads, a round trip each).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from orchestrator import speedups

_installed = False
_lock = threading.Lock()
_present: set[tuple[str, str, str]] = set()
_values: dict[tuple[str, str, str], Any] = {}
WRITES = ("register", "unregister", "flush_values")


def install() -> None:
    """Keep registry reads in this process from now on (once; later calls do nothing)."""
    global _installed
    if not speedups.enabled():
        return
    with _lock:
        if _installed:
            return
        from ray.experimental.internal_kv import _internal_kv_initialized
        from ray.tune.registry import _Registry

        original_contains, original_get = _Registry.contains, _Registry.get

        def contains(self: Any, category: str, key: str) -> bool:
            if not _internal_kv_initialized():  # before Ray is up: Tune's local table
                return bool(original_contains(self, category, key))
            found = (self.prefix, category, key)
            if found in _present:
                return True
            answer = bool(original_contains(self, category, key))
            if answer:
                _present.add(found)
            return answer

        def get(self: Any, category: str, key: str) -> Any:
            if not _internal_kv_initialized():
                return original_get(self, category, key)
            found = (self.prefix, category, key)
            if found not in _values:
                _values[found] = original_get(self, category, key)
                _present.add(found)
            return _values[found]

        _Registry.contains = contains
        _Registry.get = get
        for name in WRITES:
            setattr(_Registry, name, _forgetting_first(getattr(_Registry, name)))
        _installed = True


def forget() -> None:
    """Drop every kept read (each registry write does this first)."""
    _present.clear()
    _values.clear()


def _forgetting_first(write: Callable[..., Any]) -> Callable[..., Any]:
    def forgetting(self: Any, *args: Any, **kwargs: Any) -> Any:
        forget()
        return write(self, *args, **kwargs)

    return forgetting
