"""The thin adapter between a trainable's training session and Ray Tune.

A class ``Trainable`` rather than a function: Ray asks for the next epochs only when the
scheduler wants them (no thread blocking on ``tune.report``), and ``reset_config`` lets one
actor run trial after trial.

One ``step()`` trains until the next epoch the driver must see at once (an ASHA rung, the
last epoch, divergence) or until ``report_every_s`` has passed, and returns every epoch it
trained in ``EPOCH_RESULTS``: a round trip through Ray costs milliseconds of driver and
actor time, as much as a whole epoch of a small network, while ASHA only decides at its
rungs. The driver still logs and journals each epoch as its own step.

An actor keeps the dataset it was given, already converted to tensors on its device, for its
whole life: the data crosses the object store once per actor, and a trial never reloads it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
from ray import tune

from orchestrator.store.journal import RESUME_FROM
from orchestrator.trials import EPOCH_RESULTS
from trainables import DataSplits, TensorSplits, TrainingSession, get_trainable

STATE_FILE = "state.pt"


class CaviarTrainable(tune.Trainable):
    """Runs one trial of a registered trainable, one epoch per ``step``."""

    def setup(
        self,
        config: dict[str, Any],
        data: DataSplits,
        trainable_name: str,
        trainable_path: tuple[str, ...] = (),
        checkpoint_every_s: float = 0.0,
        report_every_s: float = 0.0,
        report_at: tuple[int, ...] = (),
    ) -> None:
        # The spec's folder where it exists on this node, else the job's working directory.
        search = [p for p in trainable_path if Path(p).is_dir()] + [os.getcwd()]
        self._definition = get_trainable(trainable_name, search)
        self._checkpoint_every_s = checkpoint_every_s
        self._report_every_s = report_every_s
        self._report_at = frozenset(report_at)
        self._last_checkpoint = time.monotonic()
        cpus = self.trial_resources.required_resources.get("CPU", 1) if self.trial_resources else 1
        torch.set_num_threads(max(1, int(cpus)))
        self._device = _device()
        self._node = _node_id()  # an actor never moves: ask Ray once, not every epoch
        self._pid = os.getpid()  # journaled: shows which worker process ran each trial
        self._tensors = TensorSplits.from_splits(data, self._device)
        self._last_result: dict[str, Any] = {}
        self._start(config)

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        self._last_result = {}
        self._last_checkpoint = time.monotonic()
        self._start(new_config)
        return True

    def _start(self, config: dict[str, Any]) -> None:
        """A new trial, or one a resumed sweep continues from the checkpoint it names."""
        config = dict(config)
        resume_from = config.pop(RESUME_FROM, None)
        self._session = self._new_session(config)
        if resume_from:
            self.load_checkpoint(resume_from)

    def step(self) -> dict[str, Any]:
        if self._session.finished and self._last_result:
            # Continued from the checkpoint a trial took as it ended (its driver died before
            # journaling the end): report the last epoch again and stop; the driver does not
            # log an epoch twice.
            return {**self._last_result, EPOCH_RESULTS: [self._last_result], "done": True}
        deadline = time.monotonic() + self._report_every_s
        epochs: list[dict[str, Any]] = []
        while True:
            epoch = dict(self._session.step())
            epoch["node_id"] = self._node
            epoch["worker_pid"] = self._pid
            epoch["ended_at"] = time.time()
            epochs.append(epoch)
            if self._must_report(epoch) or time.monotonic() >= deadline:
                break
        self._last_result = epochs[-1]
        result: dict[str, Any] = {**epochs[-1], EPOCH_RESULTS: epochs}
        if self._session.finished:
            result["done"] = True
        interval = self._checkpoint_every_s
        if interval > 0 and time.monotonic() - self._last_checkpoint >= interval:
            result["should_checkpoint"] = True
        return result

    def _must_report(self, epoch: dict[str, Any]) -> bool:
        """An epoch the driver must see before the next one trains: a rung (ASHA decides
        there whether the trial goes on), or the trial's end."""
        return self._session.finished or int(epoch.get("epoch", 0)) in self._report_at

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        self._last_checkpoint = time.monotonic()
        torch.save(
            {
                "config": {k: v for k, v in self.config.items() if k != RESUME_FROM},
                "session": self._session.state_dict(),
                "last_result": self._last_result,
            },
            Path(checkpoint_dir) / STATE_FILE,
        )

    def load_checkpoint(self, checkpoint: str | dict[str, Any]) -> None:
        state = torch.load(
            Path(str(checkpoint)) / STATE_FILE, map_location=self._device, weights_only=False
        )
        self._session.load_state_dict(state["session"])
        self._last_result = dict(state.get("last_result", {}))

    def _new_session(self, config: dict[str, Any]) -> TrainingSession:
        return self._definition.make_session(config, self._tensors, self._device)


def _device() -> torch.device:
    """The GPU Ray assigned to this actor, else the CPU."""
    import ray

    if ray.get_gpu_ids() and torch.cuda.is_available():
        return torch.device("cuda")  # Ray sets CUDA_VISIBLE_DEVICES to the assigned GPUs
    return torch.device("cpu")


def _node_id() -> str:
    import ray

    try:
        return ray.get_runtime_context().get_node_id()
    except Exception:  # outside Ray (tests of the adapter) there is no node
        return os.uname().nodename


def load_trial_state(checkpoint_dir: str | Path) -> dict[str, Any]:
    """Read back what ``save_checkpoint`` wrote: the trial's config and session state."""
    return torch.load(Path(checkpoint_dir) / STATE_FILE, map_location="cpu", weights_only=False)
