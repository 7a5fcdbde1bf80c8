"""The spec's ``panda:`` section: how ``caviar panda`` babysits one model.

Panda mode trains one configuration and changes it as it trains; this section holds what the
session does without a person (``rules``) and how far back it can go (``keep``). A sweep
(``caviar run``) ignores it. Every rule is off unless the spec names it, so a panda session
without rules changes only what a person tells it to.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, WithJsonSchema

from orchestrator.spec.base import StrictModel

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(s|m|min|h)?\s*$")
_UNIT_S = {None: 1.0, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_duration(value: Any) -> Any:
    """``90``, ``90s``, ``1.5m``, ``5min`` or ``1h`` as seconds (a float); anything else is
    left to pydantic, which refuses it with the field's name."""
    if isinstance(value, str):
        found = _DURATION.match(value)
        if found is None:
            raise ValueError(
                f"{value!r} is not a duration: give seconds (90) or a number with s, m or h "
                "(90s, 5m, 1h)"
            )
        return float(found.group(1)) * _UNIT_S[found.group(2)]
    return value


def format_duration(seconds: float) -> str:
    """Seconds as the spec would say them: 300 -> 5m, 90 -> 90s, 3600 -> 1h."""
    for unit, size in (("h", 3600.0), ("m", 60.0)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


# In the JSON Schema as what a spec may write (editors complete from it): seconds or "5m".
Seconds = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "pattern": r"^\s*(\d+(\.\d*)?|\.\d+)\s*(s|m|min|h)?\s*$"},
            ]
        }
    ),
]


class PlateauRule(StrictModel):
    """The objective stopped improving: multiply the learning rate by ``factor``."""

    patience: Annotated[
        int,
        Field(
            ge=1,
            le=10_000,
            description="Epochs without improvement of the objective (since the last change) "
            "before the learning rate is lowered.",
        ),
    ] = 3
    factor: Annotated[
        float, Field(gt=0, lt=1, description="The learning rate is multiplied by this.")
    ] = 0.5
    min_delta: Annotated[
        float,
        Field(ge=0, description="An improvement smaller than this does not count as one."),
    ] = 0.0


class DivergenceRule(StrictModel):
    """The loss went NaN or infinite: rewind to the last good epoch, learning rate x ``factor``."""

    factor: Annotated[
        float, Field(gt=0, lt=1, description="The learning rate is multiplied by this.")
    ] = 0.1
    max_rewinds: Annotated[
        int,
        Field(
            ge=1,
            le=100,
            description="Rewinds this rule may make in one session; the next divergence ends it.",
        ),
    ] = 3


class StopRule(StrictModel):
    """Stop the session when the objective has not improved for ``patience`` epochs."""

    patience: Annotated[
        int,
        Field(ge=1, le=100_000, description="Epochs without a new best objective before stopping."),
    ] = 10
    min_delta: Annotated[
        float,
        Field(ge=0, description="An improvement smaller than this does not count as one."),
    ] = 0.0


class PandaRules(StrictModel):
    """The babysitting rules; each is off unless named."""

    plateau: Annotated[
        PlateauRule | None,
        Field(description="On a plateau of the objective, lower the learning rate."),
    ] = None
    divergence: Annotated[
        DivergenceRule | None,
        Field(description="On divergence, rewind to the last good epoch and lower the rate."),
    ] = None
    stop: Annotated[
        StopRule | None,
        Field(description="Stop after this many epochs without improvement."),
    ] = None


class PandaSpec(StrictModel):
    """``caviar panda``: the babysitting rules, which epoch checkpoints are kept, and the pace
    a person can follow."""

    keep: Annotated[
        int,
        Field(
            ge=1,
            le=100_000,
            description="Checkpoints kept, at least: the newest epochs of the current branch "
            "that `caviar panda adjust --rewind-to` can go back to (keep_for may keep more).",
        ),
    ] = 10
    keep_for: Annotated[
        Seconds,
        Field(
            ge=0,
            le=7 * 24 * 3600,
            description="Also kept: every epoch of the current branch trained in this much "
            "training time before the newest (seconds, or 90s, 5m, 1h; time paused does not "
            "count; 0: keep alone decides), up to keep_max_mb.",
        ),
    ] = 300.0
    keep_max_mb: Annotated[
        float,
        Field(
            gt=0,
            description="Disk the keep_for checkpoints may take (MB); past it the oldest of "
            "them go first. The newest keep epochs stay whatever their size.",
        ),
    ] = 1024.0
    start_paused: Annotated[
        bool,
        Field(
            description="A new session waits before its first epoch until `caviar panda "
            "resume RUN_ID` (or p in its terminal): time to copy the run id and look.",
        ),
    ] = False
    min_epoch_time: Annotated[
        Seconds,
        Field(
            ge=0,
            le=3600,
            description="The least wall time between two epochs (seconds, or 2s, 1m): a model "
            "that trains faster than a person reads waits out the rest; 0: full speed.",
        ),
    ] = 0.0
    rules: Annotated[PandaRules, Field(description="What the session does without a person.")] = (
        Field(default_factory=PandaRules)
    )
