"""How the scheduler's stops reach a fused pack: the sweep's mailbox.

A member the scheduler stops must leave its pack before the pack trains another epoch, but a
Tune trainable receives nothing from the driver between steps. A mailbox carries those
decisions (:class:`KvMailbox`; :class:`ActorMailbox` with speed-ups off): the scheduler posts,
for every result of a pack, the members it stopped there (possibly none), keyed by the pack
and the result's ``training_iteration``; the pack takes that post before its next step,
waiting for it if it has not arrived. So a pack trains exactly the epochs its scheduler lets
its members train.

The trial workers unpickle a mailbox and import this module, so it imports nothing of the
driver's (the spec's models, the searcher): what a worker imports before its first trial is
on every cold sweep's path to its first result.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time

import ray

from orchestrator import speedups

# A pack waits this long for the scheduler's post before training on as if nothing had been
# stopped (the driver then ignores the stopped members' extra epochs): only a driver that is
# gone or wedged takes this long, and the actor must not hang forever on it.
MAILBOX_WAIT_S = 600.0


class KvMailbox:
    """The mailbox in Ray's GCS key-value store: no process to start, and a post is stored
    before the scheduler returns, so before Tune asks the pack for its next step (the pack
    still waits for it, should that order ever not hold). A private Ray API: a speed-up
    (``orchestrator.speedups``), with :class:`ActorMailbox` when speed-ups are off."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace  # one per sweep run: posts of a killed run never match

    def post(self, pack: int, iteration: int, stopped: list[int]) -> None:
        from ray.experimental.internal_kv import _internal_kv_put

        key = f"{pack}/{iteration}".encode()
        _internal_kv_put(key, json.dumps(stopped).encode(), True, namespace=self.namespace)

    def take(self, pack: int, iteration: int, timeout_s: float) -> list[int] | None:
        from ray.experimental.internal_kv import _internal_kv_get

        key = f"{pack}/{iteration}".encode()
        deadline = time.monotonic() + timeout_s
        while True:
            found = _internal_kv_get(key, namespace=self.namespace)
            if found is not None:
                return [int(i) for i in json.loads(found)]
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.002)

    def close(self) -> None:
        from ray.experimental.internal_kv import _internal_kv_del

        try:
            _internal_kv_del(b"", del_by_prefix=True, namespace=self.namespace)
        except Exception:  # Ray already shut down: its store went with it
            pass


@ray.remote(num_cpus=0)
class _MailboxActor:
    def __init__(self) -> None:
        self._posts: dict[tuple[int, int], list[int]] = {}
        self._arrived: dict[tuple[int, int], asyncio.Event] = {}

    def _event(self, key: tuple[int, int]) -> asyncio.Event:
        return self._arrived.setdefault(key, asyncio.Event())

    async def post(self, pack: int, iteration: int, stopped: list[int]) -> None:
        key = (pack, iteration)
        self._posts[key] = list(stopped)
        self._event(key).set()

    async def take(self, pack: int, iteration: int, timeout_s: float) -> list[int] | None:
        key = (pack, iteration)
        try:
            await asyncio.wait_for(self._event(key).wait(), timeout_s)
        except TimeoutError:  # asyncio.TimeoutError is TimeoutError since 3.11
            return None
        return list(self._posts[key])


class ActorMailbox:
    """The mailbox as a small async actor (Ray's public API only). Two callers' messages to
    an actor are not ordered, so a take waits for its post. Posts are kept: a pack restored
    from a checkpoint takes again the posts of the iterations after it."""

    def __init__(self) -> None:
        self._actor = _MailboxActor.remote()  # type: ignore[attr-defined]

    def post(self, pack: int, iteration: int, stopped: list[int]) -> None:
        self._actor.post.remote(pack, iteration, stopped)

    def take(self, pack: int, iteration: int, timeout_s: float) -> list[int] | None:
        return ray.get(self._actor.take.remote(pack, iteration, timeout_s))

    def close(self) -> None:
        try:
            ray.kill(self._actor)
        except Exception:  # Ray already shut down: the actor went with it
            pass


Mailbox = KvMailbox | ActorMailbox


def start_mailbox(sweep_id: str) -> Mailbox:
    """This sweep run's mailbox (see the module doc)."""
    if speedups.enabled():
        return KvMailbox(f"caviar-packs-{sweep_id}-{secrets.token_hex(4)}")
    return ActorMailbox()


def stop_mailbox(mailbox: Mailbox | None) -> None:
    if mailbox is not None:
        mailbox.close()
