"""What a trainable is: the protocol every model caviar tunes implements, built-in or the user's.

A trainable is a :class:`~trainables.registry.TrainableDefinition`:

- ``name`` and ``description``, for listings and errors;
- ``config_model``: a pydantic model of the parameters a spec may set (``fixed``) or search
  (``space``); a spec naming any other parameter, or a value the model refuses, is a spec
  error before anything runs. It must have an ``epochs`` field (the trial's budget) and may
  have a ``seed`` field;
- ``metrics``: each metric the session reports, with the direction it improves in
  (``"max"`` or ``"min"``); a spec's objective must be one of them;
- ``make_session(config, tensors, device)``: a fresh :class:`TrainingSession` for one trial.

A session trains one epoch per ``step()`` (see :class:`TrainingSession`). caviar runs it on a
Ray worker, asks for epochs only when the scheduler wants them, checkpoints it with
``state_dict``/``load_state_dict`` (a resumed trial continues exactly), and at the end rebuilds
the best trial from its checkpoint, scores it once on the test split with ``evaluate`` and logs
its ``model`` to MLflow. ``bn_softmax_mlp`` (``trainables/train.py``) is the reference
implementation of this same protocol; ``examples/own_model/models.py`` is a second one.

A spec names a trainable by its registered name, by an import path ``package.module:NAME``
(looked up in the spec's folder first, then on ``sys.path``), or by the name of an entry point
in the ``caviar.trainables`` group of an installed package.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

__all__ = ["REQUIRED_RESULT_KEYS", "TrainingSession"]

# Every result of ``step()`` holds these, besides the trainable's declared metrics.
REQUIRED_RESULT_KEYS = ("epoch",)


@runtime_checkable
class TrainingSession(Protocol):
    """One trial's training, one epoch per step; nothing of Ray or MLflow in it."""

    model: torch.nn.Module  # the network logged to MLflow when this trial is the best

    @property
    def finished(self) -> bool:
        """True once the trial trained its ``epochs`` (or diverged): no more steps."""
        ...

    def step(self) -> Mapping[str, Any]:
        """Train one epoch and evaluate on the validation split.

        Returns ``epoch`` (1, 2, ...), every declared metric, and optionally ``diverged``
        (True ends the trial as diverged), ``epoch_seconds`` and ``learning_rate``, which
        caviar logs too. Numbers only: the values are logged as MLflow metrics."""
        ...

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """(loss, accuracy) on the given split; used once, for the best trial's test score."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: weights, optimizer, epoch, random state."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state_dict()``'s output (in a new process, possibly another node)."""
        ...
