"""``bench_noop``: a trainable whose every step takes a fixed time and trains nothing.

Run through caviar's own sweep machinery (bench/overhead_bench.py), it makes everything but
the fixed step time orchestration: scheduling, the actor round trip per report, callbacks,
MLflow queueing, checkpoints. A step either spins (holds its core, as training does, so the
driver and Ray compete for CPU as in a real sweep) or sleeps (frees it).

Importing this module registers the trainable. The driver imports it before loading the spec;
Ray's workers import it through ``register``, named as the job's ``worker_process_setup_hook``,
because caviar's registry is per process and caviar has no plugin setting of its own.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from trainables import TensorSplits, TrainableDefinition
from trainables import register as register_trainable

NAME = "bench_noop"


class NoopConfig(BaseModel):
    """What a spec may set for ``bench_noop``."""

    model_config = ConfigDict(extra="forbid")

    step_seconds: Annotated[float, Field(0.01, ge=0, description="Time one step takes.")]
    step_kind: Annotated[
        Literal["spin", "sleep"],
        Field("spin", description="spin: busy-wait on the core; sleep: give it up."),
    ]
    epochs: Annotated[int, Field(30, ge=1, description="Steps (reports) per trial.")]
    seed: Annotated[int, Field(0, ge=0, description="Varied so trials differ; unused.")]


class NoopSession:
    """The session protocol caviar's adapter and best-model test use, with nothing to train.

    ``model`` is a real (tiny) network because caviar tests and logs the best trial's model
    after the sweep; that happens after the last trial, outside the measured sweep time.
    """

    def __init__(
        self, config: Mapping[str, Any], data: TensorSplits, device: torch.device | str = "cpu"
    ) -> None:
        self.config = NoopConfig.model_validate(dict(config))
        self.data = data
        self.model = torch.nn.Linear(data.n_features, data.n_classes)
        self.epoch = 0

    @property
    def finished(self) -> bool:
        return self.epoch >= self.config.epochs

    def step(self) -> dict[str, Any]:
        started = time.perf_counter()
        deadline = started + self.config.step_seconds
        if self.config.step_kind == "sleep":
            time.sleep(self.config.step_seconds)
        else:
            while time.perf_counter() < deadline:
                pass
        self.epoch += 1
        # A made-up score that rises with the epoch, so ranking has something to rank.
        score = 0.5 + 0.4 * (self.config.seed % 997) / 997 * self.epoch / self.config.epochs
        return {
            "epoch": self.epoch,
            "val_accuracy": score,
            "epoch_seconds": time.perf_counter() - started,
            "diverged": False,
        }

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        with torch.no_grad():
            logits = self.model(x)
            loss = float(F.cross_entropy(logits, y))
            accuracy = float((logits.argmax(dim=1) == y).float().mean())
        return loss, accuracy

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "model": self.model.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.model.load_state_dict(state["model"])


NOOP = TrainableDefinition(
    name=NAME,
    description="Benchmark only: fixed-time steps, no training (bench/noop_trainable.py).",
    config_model=NoopConfig,
    metrics={"val_accuracy": "max"},
    make_session=NoopSession,  # type: ignore[arg-type]  # the session protocol, not the class
)


def register() -> None:
    """Register ``bench_noop`` in this process; idempotent (Ray's worker setup hook)."""
    register_trainable(NOOP)


register()
