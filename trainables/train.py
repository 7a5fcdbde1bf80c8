"""One trial's training loop, with no Ray in it.

The orchestrator wraps a TrainingSession in whatever executes trials (a Ray
Tune function, a local loop, a test); the session only trains, evaluates and
snapshots itself. Keeping Ray out means the loop is tested directly, and a
trial's numbers do not depend on how it was scheduled.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from trainables.adjustable import ADJUSTABLE
from trainables.compiler_import import defer_compiler_import, eager_optimizer
from trainables.config import MlpConfig
from trainables.data import DataSplits
from trainables.model import BnSoftmaxMLP, recompute_population_statistics

__all__ = [
    "ADJUSTABLE",
    "RESULT_KEYS",
    "TensorSplits",
    "TrainingSession",
    "build_optimizer",
    "fit",
    "learning_rate_at",
]

RESULT_KEYS: tuple[str, ...] = (
    "epoch",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "epoch_seconds",
    "learning_rate",
    "diverged",
)
"""The keys of every step() result, in order; the orchestrator's metric names."""


@dataclass(frozen=True, eq=False)
class TensorSplits:
    """The data already on the trial's device, built once and reused across trials.

    Moving numpy arrays to a device per trial would repeat the same copy for
    every trial of a sweep; building this once per worker avoids it. The
    whole dataset lives on the device because the datasets are small, which
    lets mini-batches be slices instead of a DataLoader's per-batch copies.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_features: int
    n_classes: int

    @classmethod
    def from_splits(cls, splits: DataSplits, device: torch.device | str) -> TensorSplits:
        """Convert float32/int64 numpy splits to tensors on ``device``."""
        target = torch.device(device)

        def put(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
            return torch.as_tensor(np.ascontiguousarray(array), dtype=dtype).to(target)

        return cls(
            x_train=put(splits.x_train, torch.float32),
            y_train=put(splits.y_train, torch.int64),
            x_val=put(splits.x_val, torch.float32),
            y_val=put(splits.y_val, torch.int64),
            x_test=put(splits.x_test, torch.float32),
            y_test=put(splits.y_test, torch.int64),
            n_features=splits.n_features,
            n_classes=splits.n_classes,
        )

    def to(self, device: torch.device | str) -> TensorSplits:
        """The same splits on ``device``; ``self`` when already there, so the
        common case costs nothing."""
        target = torch.device(device)
        tensors = (self.x_train, self.y_train, self.x_val, self.y_val, self.x_test, self.y_test)
        if all(_same_device(t.device, target) for t in tensors):
            return self
        moved = [t.to(target) for t in tensors]
        return TensorSplits(*moved, n_features=self.n_features, n_classes=self.n_classes)


def _same_device(actual: torch.device, wanted: torch.device) -> bool:
    """'cuda' and 'cuda:0' name the same device when the current one is 0."""
    if actual.type != wanted.type:
        return False
    return wanted.index is None or actual.index == wanted.index


def learning_rate_at(config: MlpConfig, epoch: int) -> float:
    """The course's 1/t decay: lr = lr0 / (1 + lr_decay * epoch), epoch from 0.

    A pure function so a report can plot the schedule a trial used without
    rerunning it.
    """
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    return config.learning_rate / (1.0 + config.lr_decay * epoch)


def build_optimizer(
    config: MlpConfig, params: Iterable[torch.nn.Parameter]
) -> torch.optim.Optimizer:
    """Map the config's optimizer fields to torch's argument names.

    weight_decay is the classic L2 term added to the gradient for all three
    (Adam, not AdamW), so it means the same penalty whichever optimizer a
    sweep picks. RMSprop runs without momentum; its alpha is beta2 (the EWMA
    decay of squared gradients, the course's beta2).
    """
    defer_compiler_import()  # torch would import its compiler in every process
    if config.optimizer == "sgd":
        return eager_optimizer(torch.optim.SGD)(
            params,
            lr=config.learning_rate,
            momentum=config.momentum,
            nesterov=config.nesterov,
            weight_decay=config.weight_decay,
        )
    if config.optimizer == "adam":
        return eager_optimizer(torch.optim.Adam)(
            params,
            lr=config.learning_rate,
            betas=(config.beta1, config.beta2),
            eps=config.eps,
            weight_decay=config.weight_decay,
        )
    if config.optimizer == "rmsprop":
        return eager_optimizer(torch.optim.RMSprop)(
            params,
            lr=config.learning_rate,
            alpha=config.beta2,
            eps=config.eps,
            weight_decay=config.weight_decay,
            momentum=0.0,
        )
    raise ValueError(f"unknown optimizer {config.optimizer!r}")


def _stream_seeds(seed: int) -> tuple[int, int]:
    """Two independent 63-bit seeds (init, shuffling) from one config seed, so
    the init and shuffling streams are not the same random sequence."""
    init_seed, shuffle_seed = np.random.SeedSequence(seed).generate_state(2, dtype=np.uint64)
    return int(init_seed) >> 1, int(shuffle_seed) >> 1


class TrainingSession:
    """One trial: model + optimizer + epoch counter; one step() = one epoch.

    A step-wise object rather than a function, because the executor decides
    between epochs whether to report, checkpoint or stop early (ASHA), and a
    checkpoint must capture everything needed to continue bit for bit.
    """

    def __init__(
        self,
        config: Mapping[str, Any] | MlpConfig,
        data: TensorSplits,
        device: torch.device | str = "cpu",
    ) -> None:
        self.config: MlpConfig = (
            config if isinstance(config, MlpConfig) else MlpConfig.model_validate(dict(config))
        )
        self.device = torch.device(device)
        self.data = data.to(self.device)
        n_train = int(self.data.x_train.shape[0])
        if n_train < 2:
            raise ValueError(f"training needs at least 2 rows, got {n_train}")
        if int(self.data.x_val.shape[0]) < 1:
            raise ValueError("the validation split is empty")

        init_seed, shuffle_seed = _stream_seeds(self.config.seed)
        # Seed the init inside a forked RNG: identical configs get identical
        # weights, and the caller's global torch RNG state is left untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            model = BnSoftmaxMLP(
                self.data.n_features,
                self.data.n_classes,
                hidden_units=self.config.hidden_units,
                layers=self.config.layers,
                activation=self.config.activation,
                batch_norm=self.config.batch_norm,
                bn_momentum=self.config.bn_momentum,
            )
        self.model: BnSoftmaxMLP = model.to(self.device)
        self._optimizer: torch.optim.Optimizer | None = None
        self._saved_optimizer_state: Mapping[str, Any] | None = None
        # The shuffling generator lives on the CPU so the batch order is the
        # same on every device; its state advances across epochs.
        self._shuffle_generator = torch.Generator(device="cpu")
        self._shuffle_generator.manual_seed(shuffle_seed)
        self.epoch: int = 0
        self.diverged: bool = False

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """Built on first use: a session that only evaluates a checkpoint (the best model's
        test on the driver) needs none."""
        if self._optimizer is None:
            self._optimizer = build_optimizer(self.config, self.model.parameters())
            if self._saved_optimizer_state is not None:
                _load_optimizer_state(self._optimizer, self._saved_optimizer_state)
                self._saved_optimizer_state = None
        return self._optimizer

    adjustable: frozenset[str] = ADJUSTABLE

    def adjust(self, changes: Mapping[str, Any]) -> None:
        """Change hyperparameters between epochs (panda mode); the next ``step`` uses them.

        Only :data:`ADJUSTABLE` names are accepted (a ``ValueError`` names the others); the new
        config is validated as a whole first, so a refused change leaves the session as it
        was. The optimizer keeps its moments and step counts: only its numbers change, which
        is what makes an adjustment at an epoch boundary exact (the same adjustments at the
        same epochs give the same weights, bit for bit).
        """
        refused = sorted(set(changes) - self.adjustable)
        if refused:
            raise ValueError(f"cannot change {', '.join(refused)} mid-training")
        self.config = MlpConfig.model_validate({**self.config.model_dump(), **dict(changes)})
        for module in self.model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.momentum = self.config.bn_momentum
        if self._optimizer is not None:
            _set_optimizer_numbers(self._optimizer, self.config)

    @property
    def finished(self) -> bool:
        """True once all epochs ran or the loss went non-finite."""
        return self.diverged or self.epoch >= self.config.epochs

    def step(self) -> dict[str, float | int | bool]:
        """Train one epoch, then validate; returns the epoch's metrics (RESULT_KEYS).

        On divergence (a non-finite loss) the epoch stops at that batch and
        the result reports train_loss = val_loss = nan, train_accuracy =
        val_accuracy = 0.0 and diverged = True: the weights are garbage, so
        their accuracy would only be an artefact (NaN logits argmax to class
        0), while 0.0 ranks the trial last under "max" without special cases.
        The diverged epoch counts in ``epoch``, so results stay numbered 1, 2, ...
        """
        if self.finished:
            reason = "diverged" if self.diverged else f"ran all {self.config.epochs} epochs"
            raise RuntimeError(f"step() called on a finished session (it {reason})")
        started = time.perf_counter()
        cfg = self.config
        x_train, y_train = self.data.x_train, self.data.y_train
        n_train = int(x_train.shape[0])

        # 1. Learning rate for this epoch (1/t decay, epoch counted from 0).
        lr = learning_rate_at(cfg, self.epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

        # 2. Shuffle the row order with the session's own generator.
        order = torch.randperm(n_train, generator=self._shuffle_generator).to(self.device)

        # 3. Batch boundaries. A trailing batch of one row is dropped: BatchNorm
        #    in train mode cannot normalize a single row (variance 0, torch
        #    raises), and skipping one row per epoch changes nothing measurable.
        #    Done with or without BN, so an ablation sees the same batches.
        n_used = n_train - 1 if n_train % cfg.batch_size == 1 else n_train

        self.model.train()
        # Device-side sums avoid a host sync per batch; float32 so that every
        # backend (mps has no float64) runs the same code.
        loss_sum = torch.zeros((), dtype=torch.float32, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        diverged = False
        for start in range(0, n_used, cfg.batch_size):
            # 4. Slice the mini-batch from the tensors already on the device.
            rows = order[start : start + cfg.batch_size]
            xb, yb = x_train[rows], y_train[rows]

            # 5. Forward pass; the softmax is inside cross_entropy.
            logits = self.model(xb)
            loss = F.cross_entropy(logits, yb)

            # 6. Stop at the first non-finite loss: further updates would only
            #    spread nan through the weights.
            if not bool(torch.isfinite(loss)):
                diverged = True
                break

            # 7. Backward pass and parameter update.
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()

            # 8. Epoch averages from the training forward passes, weighted by
            #    batch size, so no second pass over the training set is needed.
            loss_sum += loss.detach() * rows.numel()
            correct += (logits.detach().argmax(dim=1) == yb).sum()

        self.epoch += 1
        if not diverged:
            # 9. Population statistics (if chosen) with the final weights, then validate.
            if cfg.bn_eval == "population":
                recompute_population_statistics(self.model, x_train)
            val_loss, val_accuracy = self.evaluate(self.data.x_val, self.data.y_val)
            # Weights can overflow on the last update without the last training
            # loss showing it; a non-finite validation loss is divergence too.
            diverged = not math.isfinite(val_loss)

        if diverged:
            self.diverged = True
            return self._result(
                train_loss=math.nan,
                train_accuracy=0.0,
                val_loss=math.nan,
                val_accuracy=0.0,
                lr=lr,
                started=started,
            )
        return self._result(
            train_loss=float(loss_sum) / n_used,
            train_accuracy=int(correct) / n_used,
            val_loss=val_loss,
            val_accuracy=val_accuracy,
            lr=lr,
            started=started,
        )

    def _result(
        self,
        *,
        train_loss: float,
        train_accuracy: float,
        val_loss: float,
        val_accuracy: float,
        lr: float,
        started: float,
    ) -> dict[str, float | int | bool]:
        """One place that fixes the result's keys and types (RESULT_KEYS)."""
        return {
            "epoch": self.epoch,
            "train_loss": float(train_loss),
            "train_accuracy": float(train_accuracy),
            "val_loss": float(val_loss),
            "val_accuracy": float(val_accuracy),
            "epoch_seconds": time.perf_counter() - started,
            "learning_rate": float(lr),
            "diverged": self.diverged,
        }

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """(mean cross-entropy, accuracy) in eval mode, so BN uses its stored
        statistics and the result does not depend on how rows are batched.
        Restores the previous training flag so it can be called mid-training."""
        if x.shape[0] == 0:
            raise ValueError("cannot evaluate on an empty split")
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                logits = self.model(x.to(self.device))
                target = y.to(self.device)
                loss = F.cross_entropy(logits, target)
                correct = int((logits.argmax(dim=1) == target).sum())
        finally:
            self.model.train(was_training)
        return float(loss), correct / int(x.shape[0])

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: weights and BN buffers, optimizer
        moments, epoch, divergence flag and the shuffling generator's state.

        Deep-copied, so the snapshot does not change as training continues;
        it holds only tensors and plain values, so it loads with
        ``torch.load(..., weights_only=True)``.
        """
        return {
            "model": copy.deepcopy(self.model.state_dict()),
            "optimizer": copy.deepcopy(
                self._saved_optimizer_state
                if self._optimizer is None and self._saved_optimizer_state is not None
                else self.optimizer.state_dict()
            ),
            "epoch": self.epoch,
            "diverged": self.diverged,
            "shuffle_rng_state": self._shuffle_generator.get_state().clone(),
            "config": self.config.model_dump(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a snapshot from state_dict().

        The session's own config wins over the hyperparameters saved inside
        the optimizer state, so a trial restored with a changed config (as
        population-based training does) trains with the new values; the
        saved config is informational only.
        """
        missing = {"model", "optimizer", "epoch", "diverged", "shuffle_rng_state"} - set(state)
        if missing:
            raise KeyError(f"state is missing {', '.join(sorted(missing))}")
        self.model.load_state_dict(state["model"])
        if self._optimizer is None:
            self._saved_optimizer_state = state["optimizer"]  # applied when training goes on
        else:
            _load_optimizer_state(self._optimizer, state["optimizer"])
        self.epoch = int(state["epoch"])
        self.diverged = bool(state["diverged"])
        self._shuffle_generator.set_state(state["shuffle_rng_state"].cpu())


def _set_optimizer_numbers(optimizer: torch.optim.Optimizer, config: MlpConfig) -> None:
    """Put the config's optimizer hyperparameters in every param group (``build_optimizer``'s
    mapping; the learning rate is set by ``step`` each epoch from the schedule)."""
    numbers: dict[str, Any] = {"weight_decay": config.weight_decay}
    if config.optimizer == "sgd":
        numbers["momentum"] = config.momentum
    elif config.optimizer == "adam":
        numbers["betas"] = (config.beta1, config.beta2)
    else:
        numbers["alpha"] = config.beta2
    for group in optimizer.param_groups:
        group.update(numbers)


def _load_optimizer_state(optimizer: torch.optim.Optimizer, state: Mapping[str, Any]) -> None:
    """Load saved moments and step counts, keeping the optimizer's configured hyperparameters
    (the session's config wins over those saved in the state; see ``load_state_dict``)."""
    configured = [
        {key: value for key, value in group.items() if key != "params"}
        for group in optimizer.param_groups
    ]
    optimizer.load_state_dict(dict(state))
    for group, hyperparameters in zip(optimizer.param_groups, configured, strict=True):
        group.update(hyperparameters)


def fit(
    config: Mapping[str, Any] | MlpConfig,
    data: TensorSplits,
    report: Callable[[dict[str, Any]], None],
    device: torch.device | str = "cpu",
) -> TrainingSession:
    """Step a new session until finished, calling ``report(result)`` after every epoch.

    The report callback is injected so the same loop runs under Ray Tune
    (report = tune.report), locally, or in a test that just collects results.
    """
    session = TrainingSession(config, data, device)
    while not session.finished:
        report(session.step())
    return session
