"""The spec's ``storage:`` section: where Ray keeps results and checkpoints, and how often."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from orchestrator.spec.base import StrictModel


class StorageSpec(StrictModel):
    path: Annotated[
        str, Field(description="Folder for Ray results and checkpoints (relative to the cwd).")
    ] = "caviar_runs"
    checkpoint_every_s: Annotated[
        float,
        Field(
            ge=0,
            le=86_400,
            description=(
                "Checkpoint a running trial when this many seconds have passed since its last "
                "checkpoint, so a lost worker or a resumed sweep continues instead of starting "
                "over (0: only when the trial ends). Time, not epochs: a 40 ms epoch needs no "
                "checkpoint of its own."
            ),
        ),
    ] = 10.0
    report_every_s: Annotated[
        float,
        Field(
            ge=0,
            le=3_600,
            description=(
                "A trial sends its epochs to the driver (progress, journal, MLflow) at least "
                "this often. Shorter epochs travel in batches, each still logged as its own "
                "step; an ASHA rung epoch and the last epoch are sent at once, so early "
                "stopping decides exactly as with a report per epoch (0: report every epoch)."
            ),
        ),
    ] = 1.0
    max_failures: Annotated[
        int,
        Field(
            ge=0,
            le=100,
            description=(
                "Times a trial whose worker died is restarted from its last checkpoint before "
                "it ends as failed."
            ),
        ),
    ] = 2
