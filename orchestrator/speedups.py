"""The one switch over every speed-up that leans on another library's private internals.

Each such speed-up lives in one module (Ray's node start in ``raystart``, MLflow's schema
creation in ``sqlite_seed``, torch's optimizer wrappers in ``trainables.compiler_import``,
the interpreter's exit collection in ``cli``) and asks :func:`enabled` first. With
``CAVIAR_NO_SPEEDUPS=1`` they all stand aside and caviar uses each library only through its
public API, so a new Ray, MLflow or torch release that changes an internal shows up as a
failure of the test run made with the switch off, and users have a way round it at once.
``trainables`` reads the same variable itself (it never imports ``orchestrator``).
"""

from __future__ import annotations

import os

SWITCH = "CAVIAR_NO_SPEEDUPS"


def enabled() -> bool:
    """True unless ``CAVIAR_NO_SPEEDUPS`` is set to anything but ``""`` or ``"0"``."""
    return os.environ.get(SWITCH, "") in ("", "0")
