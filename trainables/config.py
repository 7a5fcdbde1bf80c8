"""The trial configuration of ``bn_softmax_mlp``.

This model is the contract between a sweep spec and a trial: its fields are
exactly the parameters a spec may set or search, and validating here turns a
typo or an impossible combination into an error before any trial starts,
instead of a silently ignored key or a crash hours into a sweep.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["SHAPE_FIELDS", "MlpConfig"]

SHAPE_FIELDS: tuple[str, ...] = (
    "layers",
    "hidden_units",
    "activation",
    "batch_norm",
    "optimizer",
    "batch_size",
)
"""The fields members of one fused pack must share (``trainables.pack``); all others are per
member. Here, free of torch, so a sweep's driver can group configs without building a pack."""


class MlpConfig(BaseModel):
    """Hyperparameters of one bn_softmax_mlp trial.

    Lax type coercion is kept on purpose: samplers hand back integral floats
    (64.0) for integer parameters and those must be accepted, while 64.5 is
    still rejected. Booleans are refused for numeric fields, since ``layers:
    true`` is a mistake, not a count.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    learning_rate: Annotated[float, Field(0.01, gt=0, description="Initial learning rate alpha_0.")]
    optimizer: Annotated[
        Literal["sgd", "adam", "rmsprop"],
        Field("sgd", description="Update rule: SGD (with momentum), Adam or RMSprop."),
    ]
    momentum: Annotated[
        float,
        Field(
            0.9,
            ge=0,
            lt=1,
            description="SGD momentum beta (EWMA weight of past gradients); "
            "unused by adam and rmsprop (rmsprop runs without momentum).",
        ),
    ]
    nesterov: Annotated[
        bool,
        Field(False, description="Nesterov momentum; only with optimizer=sgd and momentum > 0."),
    ]
    beta1: Annotated[
        float,
        Field(0.9, ge=0, lt=1, description="Adam's first-moment decay beta1."),
    ]
    beta2: Annotated[
        float,
        Field(
            0.999,
            ge=0,
            lt=1,
            description="Adam's second-moment decay beta2; also RMSprop's smoothing "
            "constant (torch's alpha).",
        ),
    ]
    eps: Annotated[
        float,
        Field(1e-8, gt=0, description="Adam/RMSprop denominator epsilon, guards division by 0."),
    ]
    batch_size: Annotated[
        int, Field(64, ge=1, description="Mini-batch size m (rows per gradient step).")
    ]
    hidden_units: Annotated[int, Field(64, ge=1, description="Units in each hidden layer.")]
    layers: Annotated[
        int,
        Field(2, ge=0, description="Number of hidden layers; 0 is plain softmax regression."),
    ]
    activation: Annotated[
        Literal["relu", "tanh", "sigmoid"],
        Field("relu", description="Hidden-layer activation, applied after BatchNorm."),
    ]
    batch_norm: Annotated[
        bool,
        Field(True, description="BatchNorm in every hidden layer; false for an ablation."),
    ]
    bn_eval: Annotated[
        Literal["ewma", "population"],
        Field(
            "ewma",
            description="Statistics BN uses at evaluation: the running EWMA from training, "
            "or exact mean/variance over the training set with the final weights.",
        ),
    ]
    bn_momentum: Annotated[
        float,
        Field(
            0.1,
            gt=0,
            le=1,
            description="Weight of the NEW batch in BN's running averages (PyTorch "
            "convention; the course's beta is 1 - bn_momentum).",
        ),
    ]
    lr_decay: Annotated[
        float,
        Field(
            0.0,
            ge=0,
            description="Learning-rate decay: lr = learning_rate / (1 + lr_decay * epoch), "
            "epoch counted from 0.",
        ),
    ]
    weight_decay: Annotated[
        float,
        Field(0.0, ge=0, description="L2 penalty coefficient added to the gradient."),
    ]
    epochs: Annotated[
        int, Field(30, ge=1, description="Maximum number of passes over the training set.")
    ]
    seed: Annotated[
        int,
        Field(
            0,
            ge=0,
            description="Seeds weight initialization and mini-batch shuffling; same seed, "
            "same data, same config -> same metrics.",
        ),
    ]

    @field_validator(
        "learning_rate",
        "momentum",
        "beta1",
        "beta2",
        "eps",
        "batch_size",
        "hidden_units",
        "layers",
        "bn_momentum",
        "lr_decay",
        "weight_decay",
        "epochs",
        "seed",
        mode="before",
    )
    @classmethod
    def _reject_bool(cls, value: Any) -> Any:
        """Python's bool is an int, so lax mode would read True as 1."""
        if isinstance(value, bool):
            raise ValueError("expected a number, got a boolean")
        return value

    @model_validator(mode="after")
    def _check_combinations(self) -> MlpConfig:
        """Reject combinations torch would reject mid-trial or silently ignore."""
        if self.nesterov and (self.optimizer != "sgd" or self.momentum <= 0):
            raise ValueError(
                "nesterov=true requires optimizer='sgd' and momentum > 0 "
                f"(got optimizer={self.optimizer!r}, momentum={self.momentum})"
            )
        if self.batch_norm and self.layers > 0 and self.batch_size < 2:
            raise ValueError(
                "batch_size must be >= 2 with batch_norm=true: BatchNorm cannot "
                "normalize a batch of one row (its variance is 0)"
            )
        return self
