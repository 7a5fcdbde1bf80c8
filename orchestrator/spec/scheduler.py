"""The spec's ``scheduler:`` section, by ``kind``: early stopping (asha), none (fifo), or
population-based training (pbt)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, field_validator

from orchestrator.spec.base import StrictModel


class AshaScheduler(StrictModel):
    """Asynchronous successive halving: most trials stop early, the promising ones go on."""

    kind: Annotated[Literal["asha"], Field(description="asha | fifo | pbt")] = "asha"
    grace_period: Annotated[
        int, Field(ge=1, description="Epochs every trial runs before it can be stopped.")
    ] = 2
    reduction_factor: Annotated[
        float, Field(gt=1, description="Keep 1/reduction_factor of trials at each rung.")
    ] = 3
    max_epochs: Annotated[
        int | None,
        Field(ge=1, description="Epoch budget of a trial (default: fixed.epochs, else 30)."),
    ] = None
    brackets: Annotated[int, Field(ge=1, le=10, description="Number of ASHA brackets.")] = 1


class FifoScheduler(StrictModel):
    """No early stopping: every trial trains its full budget."""

    kind: Annotated[Literal["fifo"], Field(description="asha | fifo | pbt")]
    max_epochs: Annotated[
        int | None,
        Field(ge=1, description="Epoch budget of a trial (default: fixed.epochs, else 30)."),
    ] = None


class PbtPerturbation(StrictModel):
    """How a copied trial's values are explored."""

    factors: Annotated[
        tuple[float, float],
        Field(
            description="A value is multiplied by one of these, in its scale's quantity "
            "(log1m: 1 - value), then kept inside its range."
        ),
    ] = (0.8, 1.25)
    resample_probability: Annotated[
        float,
        Field(ge=0, le=1, description="Chance a value is drawn anew from its range instead."),
    ] = 0.25

    @field_validator("factors")
    @classmethod
    def _positive(cls, factors: tuple[float, float]) -> tuple[float, float]:
        if any(f <= 0 for f in factors):
            raise ValueError("factors must be positive, e.g. [0.8, 1.25]")
        return factors


class PbtScheduler(StrictModel):
    """Population-based training: every ``interval`` epochs the bottom ``quantile`` of the
    population copies a top trial's weights and continues with its values perturbed."""

    kind: Annotated[Literal["pbt"], Field(description="asha | fifo | pbt")]
    interval: Annotated[
        int, Field(ge=1, description="Epochs between two exploit-and-explore steps.")
    ] = 4
    quantile: Annotated[
        float,
        Field(
            gt=0,
            le=0.5,
            description="Share of the population that copies (the bottom) and is copied (the top).",
        ),
    ] = 0.25
    max_epochs: Annotated[
        int | None,
        Field(ge=1, description="Epochs every trial trains (default: fixed.epochs, else 30)."),
    ] = None
    perturbation: Annotated[
        PbtPerturbation, Field(description="How a copied trial's values are explored.")
    ] = Field(default_factory=PbtPerturbation)


_KINDS = {"fifo": "__fifo__", "pbt": "__pbt__"}


def _scheduler_kind(value: Any) -> str:
    kind = value.get("kind") if isinstance(value, Mapping) else getattr(value, "kind", None)
    return _KINDS.get(str(kind), "__asha__")


SchedulerSpec = Annotated[
    Annotated[AshaScheduler, Tag("__asha__")]
    | Annotated[FifoScheduler, Tag("__fifo__")]
    | Annotated[PbtScheduler, Tag("__pbt__")],
    Discriminator(_scheduler_kind),
]
