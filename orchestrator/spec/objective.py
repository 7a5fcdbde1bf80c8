"""The spec's ``objective:`` section: what "best" means."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from orchestrator.spec.base import StrictModel


class ObjectiveSpec(StrictModel):
    metric: Annotated[
        str, Field(description="A metric the trainable reports, e.g. val_accuracy or val_loss.")
    ] = "val_accuracy"
    mode: Annotated[
        Literal["max", "min"] | None,
        Field(description="max | min (default: the metric's natural direction)."),
    ] = None
