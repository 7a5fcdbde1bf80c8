"""The panda session's model on a Ray worker: a ``LocalTrainer`` in an actor, and its proxy.

A panda session trains one model, so there is nothing for Tune to schedule: one actor, asked
for one epoch at a time, holds the trainable's session (on the GPU Ray gives it, if the spec
asks for one) and the data, converted to tensors once. :class:`RayTrainer` is the driver's
side: the same calls as ``orchestrator.panda.trainer.Trainer``, each a round trip. Ray is
joined in ``RAY_ADDRESS`` or started on loopback as for a sweep (``raystart``).

The engine sits below panda, so the trainer the worker holds is handed in (``make_local``,
panda's ``LocalTrainer``, pickled by reference and imported on the worker), never imported.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import ray
import torch

from orchestrator.engine import raystart
from trainables import DataSplits

# (data, trainable, search path, device) -> the trainer in the worker: panda's LocalTrainer.
LocalTrainerFactory = Callable[[DataSplits, str, tuple[str, ...], torch.device], Any]


@ray.remote
class PandaWorker:
    """Holds the session's model; every method is a call of the trainer ``make_local`` built."""

    def __init__(
        self,
        make_local: LocalTrainerFactory,
        data: DataSplits,
        trainable: str,
        search_path: tuple[str, ...],
        cpus: float,
    ) -> None:
        torch.set_num_threads(max(1, int(cpus)))
        self._trainer = make_local(data, trainable, search_path, _device())

    def call(self, method: str, *args: Any) -> Any:
        return getattr(self._trainer, method)(*args)


class RayTrainer:
    """The driver's proxy of a :class:`PandaWorker` (starts or joins Ray on construction)."""

    def __init__(
        self,
        make_local: LocalTrainerFactory,
        data: DataSplits,
        trainable: str,
        search_path: tuple[str, ...] = (),
        cpus: float = 1,
        gpus: float = 0,
    ) -> None:
        self._owns_ray = raystart.ensure_ray()
        self._actor = PandaWorker.options(num_cpus=cpus, num_gpus=gpus).remote(
            make_local, data, trainable, search_path, cpus
        )

    def _call(self, method: str, *args: Any) -> Any:
        return ray.get(self._actor.call.remote(method, *args))

    def start(self, config: Mapping[str, Any], checkpoint: bytes | None = None) -> None:
        self._call("start", dict(config), checkpoint)

    def step(self) -> dict[str, Any]:
        return dict(self._call("step"))

    def adjust(self, changes: Mapping[str, Any]) -> None:
        self._call("adjust", dict(changes))

    def snapshot(self) -> bytes:
        return bytes(self._call("snapshot"))

    def test(self) -> tuple[float, float]:
        loss, accuracy = self._call("test")
        return float(loss), float(accuracy)

    def close(self) -> None:
        """End the actor, and Ray too when this session started it."""
        try:
            ray.kill(self._actor)
        finally:
            if self._owns_ray:
                ray.shutdown()


def _device() -> torch.device:
    """The GPU Ray assigned to this actor, else the CPU."""
    if ray.get_gpu_ids() and torch.cuda.is_available():
        return torch.device("cuda")  # Ray sets CUDA_VISIBLE_DEVICES to the assigned GPUs
    return torch.device("cpu")
