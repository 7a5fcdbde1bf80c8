"""The base of every spec section: strict and immutable.

A typo in a user's YAML must be an error, not a key silently ignored (``extra="forbid"``), and a
parsed spec is a value that nothing downstream changes (``frozen``).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Base of every spec section: unknown keys are errors and parsed specs are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)
