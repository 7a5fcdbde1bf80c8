"""The one model a panda session trains, behind the few calls the session makes.

:class:`LocalTrainer` holds a trainable's training session in this process; the Ray actor in
``orchestrator/engine/panda_actor.py`` holds a ``LocalTrainer`` on a worker (a GPU if the
spec asks for one) and forwards the same calls, so the session's loop is the same code with or
without Ray, and its tests run without Ray.

A checkpoint crosses as bytes (torch's format, the session's ``state_dict`` and its config):
the driver keeps them on its own disk, whichever node trains.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any, Protocol

import torch

from trainables import DataSplits, TensorSplits, get_trainable


class Trainer(Protocol):
    """What the session needs from whatever trains its model."""

    def start(self, config: Mapping[str, Any], checkpoint: bytes | None = None) -> None:
        """A new model (from ``checkpoint`` if given) that trains with ``config``."""
        ...

    def step(self) -> dict[str, Any]:
        """Train one epoch; the session's result (``epoch``, metrics, ``diverged``)."""
        ...

    def adjust(self, changes: Mapping[str, Any]) -> None:
        """Change hyperparameters; the next ``step`` uses them."""
        ...

    def snapshot(self) -> bytes:
        """The model's state now, as checkpoint bytes."""
        ...

    def test(self) -> tuple[float, float]:
        """(loss, accuracy) on the test split."""
        ...

    def close(self) -> None: ...


def encode(config: Mapping[str, Any], state: Mapping[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save({"config": dict(config), "session": dict(state)}, buffer)
    return buffer.getvalue()


def decode(data: bytes) -> dict[str, Any]:
    """Checkpoint bytes back to ``{"config", "session"}`` (tensors on the CPU)."""
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)


class LocalTrainer:
    """A trainable's session in this process (``device``: where its tensors live)."""

    def __init__(
        self,
        data: DataSplits,
        trainable: str,
        search_path: tuple[str, ...] = (),
        device: torch.device | str = "cpu",
    ) -> None:
        self._definition = get_trainable(trainable, list(search_path))
        self._device = torch.device(device)
        self._tensors = TensorSplits.from_splits(data, self._device)
        self._session: Any = None
        self._config: dict[str, Any] = {}

    def start(self, config: Mapping[str, Any], checkpoint: bytes | None = None) -> None:
        """Build the session with ``config``; a checkpoint's state is loaded into it, its
        saved config ignored (the caller's ``config`` is the branch's)."""
        self._config = dict(config)
        self._session = self._definition.make_session(self._config, self._tensors, self._device)
        if checkpoint is not None:
            self._session.load_state_dict(decode(checkpoint)["session"])

    def step(self) -> dict[str, Any]:
        return dict(self._session.step())

    def adjust(self, changes: Mapping[str, Any]) -> None:
        if not hasattr(self._session, "adjust"):
            raise ValueError(f"{self._definition.name}'s session cannot be adjusted")
        self._session.adjust(dict(changes))
        self._config.update(changes)

    def snapshot(self) -> bytes:
        return encode(self._config, self._session.state_dict())

    def test(self) -> tuple[float, float]:
        return self._session.evaluate(self._tensors.x_test, self._tensors.y_test)

    def close(self) -> None:
        self._session = None
