"""The command that finishes an interrupted sweep, as the person who started it types it.

On this machine that is ``caviar run SPEC --resume``. A sweep that ``caviar submit`` sent to a
cluster keeps its state there (the journal and checkpoints on the cluster's shared storage),
so ``caviar run SPEC --resume`` on the user's machine finds nothing to resume: such a sweep is
finished by ``caviar submit SPEC --resume --address URL``, which runs ``caviar run SPEC
--resume`` as a new job. The submission puts that command in the job's environment
(:data:`RESUME_VARIABLE`), so every message of the job that says how to resume says it.

Standard library only: ``caviar run`` and the store's messages import it on every start.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

RESUME_VARIABLE = "CAVIAR_RESUME_COMMAND"


def resume_command(spec: str, environ: Mapping[str, str] = os.environ) -> str:
    """``caviar run SPEC --resume``, or in a submitted job the submit that resumes it."""
    return environ.get(RESUME_VARIABLE, "").strip() or f"caviar run {spec} --resume"


def submitted(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this process runs a sweep that ``caviar submit`` sent."""
    return bool(environ.get(RESUME_VARIABLE, "").strip())
