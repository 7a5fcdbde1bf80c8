"""The spec's ``scheduler:`` section: early stopping (asha) or none (fifo), by ``kind``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag

from orchestrator.spec.base import StrictModel


class AshaScheduler(StrictModel):
    """Asynchronous successive halving: most trials stop early, the promising ones go on."""

    kind: Annotated[Literal["asha"], Field(description="asha | fifo")] = "asha"
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

    kind: Annotated[Literal["fifo"], Field(description="asha | fifo")]
    max_epochs: Annotated[
        int | None,
        Field(ge=1, description="Epoch budget of a trial (default: fixed.epochs, else 30)."),
    ] = None


def _scheduler_kind(value: Any) -> str:
    kind = value.get("kind") if isinstance(value, Mapping) else getattr(value, "kind", None)
    return "__fifo__" if kind == "fifo" else "__asha__"


SchedulerSpec = Annotated[
    Annotated[AshaScheduler, Tag("__asha__")] | Annotated[FifoScheduler, Tag("__fifo__")],
    Discriminator(_scheduler_kind),
]
