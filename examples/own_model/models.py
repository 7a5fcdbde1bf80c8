"""Your own model in a caviar sweep: a batch-normalized convolutional softmax network.

caviar's trainable protocol (``trainables/protocol.py``, README "Your own model"):
a :class:`TrainableDefinition` names a pydantic model of the parameters a spec may set,
the metrics the session reports (and whether higher or lower is better), and a function
that builds a session; the session trains one epoch per ``step()``, scores a split with
``evaluate``, and saves and loads its whole state. The spec beside this file names it as
``trainable: models:DIGITS_CNN``; caviar imports this file on the driver and on every worker.

The data are scikit-learn's bundled digits: 64 standardized features per row, which this
network reads as the 1x8x8 images they are.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from trainables import TrainableDefinition


class CnnConfig(BaseModel):
    """What a spec may set or search for this network."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(10, ge=1, le=1000, description="Epochs to train (the trial's budget).")
    learning_rate: float = Field(0.05, gt=0, le=10, description="SGD step size.")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum beta.")
    channels: int = Field(8, ge=1, le=128, description="Channels of the first convolution.")
    batch_size: int = Field(64, ge=2, le=4096, description="Rows per mini-batch.")
    seed: int = Field(0, description="Seeds the weights and the batch order.")


class DigitsCNN(nn.Module):
    """conv 3x3 -> BN -> ReLU -> conv 3x3 -> BN -> ReLU -> pool -> linear (softmax in the loss)."""

    def __init__(self, channels: int, n_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * channels),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
        )
        self.classifier = nn.Linear(2 * channels * 16, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        images = x.reshape(-1, 1, 8, 8)  # rows of 64 pixels are 8x8 images
        return self.classifier(self.features(images).flatten(1))


class CnnSession:
    """One trial: trains one epoch per ``step()``; its state continues exactly when loaded."""

    def __init__(self, config: Mapping[str, Any], tensors: Any, device: torch.device | str):
        self.config = CnnConfig.model_validate(dict(config))
        self.data = tensors
        self.device = torch.device(device)
        torch.manual_seed(self.config.seed)
        self.model = DigitsCNN(self.config.channels, tensors.n_classes).to(self.device)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=self.config.learning_rate, momentum=self.config.momentum
        )
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self.epoch = 0
        self.diverged = False

    @property
    def finished(self) -> bool:
        return self.diverged or self.epoch >= self.config.epochs

    def step(self) -> dict[str, float | int | bool]:
        started = time.perf_counter()
        x, y = self.data.x_train, self.data.y_train
        order = torch.randperm(len(x), generator=self.generator).to(self.device)
        size = self.config.batch_size
        self.model.train()
        total, correct, seen = 0.0, 0, 0
        for start in range(0, len(x) - 1, size):  # a last batch of one row cannot use BN
            batch = order[start : start + size]
            if len(batch) < 2:
                break
            logits = self.model(x[batch])
            loss = F.cross_entropy(logits, y[batch])
            if not torch.isfinite(loss):
                self.diverged = True
                break
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += loss.item() * len(batch)
            correct += int((logits.argmax(1) == y[batch]).sum())
            seen += len(batch)
        self.epoch += 1
        val_loss, val_accuracy = self.evaluate(self.data.x_val, self.data.y_val)
        if self.diverged or not math.isfinite(val_loss):
            self.diverged = True
            return {"epoch": self.epoch, "train_loss": math.nan, "train_accuracy": 0.0,
                    "val_loss": math.nan, "val_accuracy": 0.0, "diverged": True,
                    "epoch_seconds": time.perf_counter() - started,
                    "learning_rate": self.config.learning_rate}  # fmt: skip
        return {
            "epoch": self.epoch,
            "train_loss": total / max(seen, 1),
            "train_accuracy": correct / max(seen, 1),
            "val_loss": val_loss,
            "val_accuracy": val_accuracy,
            "diverged": False,
            "epoch_seconds": time.perf_counter() - started,
            "learning_rate": self.config.learning_rate,
        }

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        self.model.eval()
        logits = self.model(x)
        loss = float(F.cross_entropy(logits, y))
        return loss, float((logits.argmax(1) == y).float().mean())

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "epoch": self.epoch,
            "diverged": self.diverged,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.epoch = int(state["epoch"])
        self.diverged = bool(state["diverged"])


DIGITS_CNN = TrainableDefinition(
    name="digits_cnn",
    description="A batch-normalized convolutional softmax network over 8x8 digit images.",
    config_model=CnnConfig,
    metrics={
        "val_accuracy": "max",
        "val_loss": "min",
        "train_accuracy": "max",
        "train_loss": "min",
    },
    make_session=CnnSession,
)
