"""The spec's ``panda:`` section: how ``caviar panda`` babysits one model.

Panda mode trains one configuration and changes it as it trains; this section holds what the
session does without a person (``rules``) and how far back it can go (``keep``). A sweep
(``caviar run``) ignores it. Every rule is off unless the spec names it, so a panda session
without rules changes only what a person tells it to.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    """Unknown keys are errors and parsed sections are immutable (as every spec section)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class PlateauRule(_Strict):
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


class DivergenceRule(_Strict):
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


class StopRule(_Strict):
    """Stop the session when the objective has not improved for ``patience`` epochs."""

    patience: Annotated[
        int,
        Field(ge=1, le=100_000, description="Epochs without a new best objective before stopping."),
    ] = 10
    min_delta: Annotated[
        float,
        Field(ge=0, description="An improvement smaller than this does not count as one."),
    ] = 0.0


class PandaRules(_Strict):
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


class PandaSpec(_Strict):
    """``caviar panda``: the babysitting rules and how many epoch checkpoints are kept."""

    keep: Annotated[
        int,
        Field(
            ge=1,
            le=100_000,
            description="Checkpoints kept: the newest epochs of the current branch that "
            "`caviar panda adjust --rewind-to` can go back to.",
        ),
    ] = 10
    rules: Annotated[PandaRules, Field(description="What the session does without a person.")] = (
        Field(default_factory=PandaRules)
    )
