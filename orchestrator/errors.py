"""The project's error types.

A user mistake (a bad spec, an unreachable tracking server) must reach the user as a short
message naming what is wrong and how to fix it, never as a Python traceback. Every such error
derives from :class:`CaviarError`; the CLI prints those and exits with ``exit_code``. Anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

from dataclasses import dataclass


class CaviarError(Exception):
    """An error the user can act on; the CLI prints ``str(error)`` without a traceback."""

    exit_code: int = 1


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec, located by its dotted path (``space.learning_rate.low``)."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class SpecError(CaviarError):
    """A spec that cannot be run; lists every problem found, each by its path."""

    exit_code = 2

    def __init__(self, problems: list[Problem], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        super().__init__(self._render())

    def _render(self) -> str:
        where = f" in {self.source}" if self.source else ""
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        lines = [f"{count} {noun}{where}:"]
        lines += [f"  - {problem}" for problem in self.problems]
        return "\n".join(lines)


class TrackingError(CaviarError):
    """The MLflow tracking store cannot be used (unreachable, refused, misconfigured)."""


class SweepError(CaviarError):
    """The sweep could not run to completion for a reason outside the spec."""


class SweepHalted(SweepError):
    """Something outside the sweep stopped it (a full disk, a journal it cannot write): what
    it journaled is kept, its runs are marked interrupted, and ``--resume`` finishes it."""


class SweepInterrupted(CaviarError):
    """The user stopped the sweep (Ctrl-C, SIGTERM, ``caviar stop``); it can be resumed.

    Not a failure: what finished is journaled and in MLflow, and the message says how many
    trials remain and the exact command that finishes them.
    """

    exit_code = 130
