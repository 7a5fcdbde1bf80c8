"""Tune's trainable registry, read through ``engine/registry_cache.py`` on a real embedded Ray:
a found key is read from Ray's key-value store once, a write makes the next read go to the
store again, and with the speed-ups off every read does."""

from __future__ import annotations

import pytest
from conftest import run_python_json

pytestmark = pytest.mark.integration

READS = """
import json
import ray
from ray.tune import registry
from orchestrator.engine import raystart, registry_cache

raystart.prepare_environment()
raystart.init_ray()
reads = []
original = registry._internal_kv_get
registry._internal_kv_get = lambda *a, **k: reads.append(1) or original(*a, **k)
registry_cache.install()
table = registry._Registry()
table.register(registry.TRAINABLE_CLASS, "box", {"version": 1})
first = table.get(registry.TRAINABLE_CLASS, "box")
second = table.get(registry.TRAINABLE_CLASS, "box")
known = [table.contains(registry.TRAINABLE_CLASS, "box") for _ in range(3)]
after_reads = len(reads)
unknown = [table.contains(registry.TRAINABLE_CLASS, "nothing") for _ in range(2)]
table.register(registry.TRAINABLE_CLASS, "box", {"version": 2})
replaced = table.get(registry.TRAINABLE_CLASS, "box")
print(json.dumps({
    "same_object": first is second,
    "known": known,
    "reads_for_two_gets_and_three_checks": after_reads,
    "unknown": unknown,
    "reads_in_all": len(reads),
    "replaced": replaced["version"],
}))
ray.shutdown()
"""


def _reads(**env: str) -> dict:
    return run_python_json(READS, **env)


def test_registry_reads_are_kept_until_the_registry_is_written() -> None:
    kept = _reads()
    assert kept["known"] == [True, True, True] and kept["unknown"] == [False, False]
    assert kept["same_object"]
    assert kept["reads_for_two_gets_and_three_checks"] == 1
    # an unknown key is asked each time (2); the write made the next get read again (1)
    assert kept["reads_in_all"] == 1 + 2 + 1
    assert kept["replaced"] == 2

    plain = _reads(CAVIAR_NO_SPEEDUPS="1")
    assert not plain["same_object"]
    assert plain["reads_for_two_gets_and_three_checks"] == 5
    assert plain["replaced"] == 2
