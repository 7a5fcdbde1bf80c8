"""The spec's ``resources:`` section: what each trial gets, how trials pack, and how long an
epoch may be silent."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from orchestrator.spec.base import StrictModel


class ResourcesSpec(StrictModel):
    cpus_per_trial: Annotated[
        float, Field(gt=0, le=1024, description="CPUs per trial; also torch's thread count.")
    ] = 1
    gpus_per_trial: Annotated[
        float,
        Field(ge=0, le=64, description="GPUs per trial; a fraction (0.25) packs trials per GPU."),
    ] = 0

    pack_size: Annotated[
        int | Literal["auto"],
        Field(
            description=(
                "Trials trained as one fused model per worker: 1 (one trial per worker), "
                "a number K, or auto (chosen from the network's shape and the device; 1 for "
                "trainables that cannot be packed). Each member is still its own trial."
            ),
            json_schema_extra={"default": "auto"},
        ),
    ] = "auto"

    epoch_timeout_s: Annotated[
        float | None,
        Field(
            gt=0,
            le=7 * 86_400,
            description=(
                "A trial silent this many seconds within one epoch (a dead-locked data loader, "
                "a hung collective) ends failed, 'timed out after N s in epoch E', and the "
                "sweep goes on; null turns the limit off. The default, an hour, is far above "
                "any epoch caviar's networks take; a live notice comes much earlier, when a "
                "trial is silent for many times its usual epoch."
            ),
        ),
    ] = 3600.0

    @field_validator("pack_size")
    @classmethod
    def _pack_size_range(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= 1024:
            raise ValueError(f"must be auto or a whole number from 1 to 1024, got {value}")
        return value

    @field_validator("gpus_per_trial")
    @classmethod
    def _whole_above_one(cls, value: float) -> float:
        if value > 1 and value != int(value):
            raise ValueError(f"above 1 must be a whole number of GPUs, got {value:g}")
        return value
