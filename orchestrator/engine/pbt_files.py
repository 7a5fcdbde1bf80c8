"""Population-based training's files in the sweep's folder: each trial's state at each
generation's end, and each generation's decisions.

Both live under the sweep's folder (which every node sees, like the trials' checkpoints):

- ``pbt/states/trial-{index}/epoch-{epoch}.pt``: a trial's full config and session state,
  written by its worker after training a boundary epoch and before reporting it. A decision
  made from that report can only name a state that exists, and it stays there for the rest
  of the sweep: a trial resumed after a kill copies the same state again.
- ``pbt/decisions/epoch-{epoch}.json``: the generation's exploits and the scores they were
  decided from, written by the driver's scheduler once, atomically, before any trial of
  the generation goes on. A decision on disk is never made again, so a resumed sweep keeps
  the decisions its killed run made; a trial reads its own before training on.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.search.pbt import Exploit
from orchestrator.trials import HP_PREFIX

PBT_DIR = "pbt"
_DECISION = re.compile(r"epoch-(\d+)\.json")


@dataclass(frozen=True)
class PbtFiles:
    """The PBT folder of one sweep (``root`` is the sweep's folder)."""

    root: Path

    @property
    def folder(self) -> Path:
        return Path(self.root) / PBT_DIR

    def state_path(self, index: int, epoch: int) -> Path:
        return self.folder / "states" / f"trial-{index}" / f"epoch-{epoch}.pt"

    def save_state(
        self, index: int, epoch: int, config: Mapping[str, Any], session: Mapping[str, Any]
    ) -> None:
        """Trial ``index``'s state at boundary ``epoch``, written whole before it is reported."""
        import torch  # the workers' side: the driver only reads decisions

        path = self.state_path(index, epoch)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".tmp")
        torch.save({"config": dict(config), "session": session}, partial)
        os.replace(partial, path)

    def load_state(self, index: int, epoch: int, device: Any = "cpu") -> dict[str, Any]:
        """What ``save_state`` wrote: ``{"config", "session"}``, tensors on ``device``."""
        import torch

        path = self.state_path(index, epoch)
        return torch.load(path, map_location=device, weights_only=False)

    def decision_path(self, epoch: int) -> Path:
        return self.folder / "decisions" / f"epoch-{epoch}.json"

    def write_decision(
        self, epoch: int, exploits: Sequence[Exploit], scores: Mapping[int, float]
    ) -> None:
        """Write a generation's decisions whole (a reader never sees half a file)."""
        path = self.decision_path(epoch)
        path.parent.mkdir(parents=True, exist_ok=True)
        body = {
            "epoch": epoch,
            "exploits": [exploit.to_json() for exploit in exploits],
            "scores": {str(index): score for index, score in sorted(scores.items())},
        }
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(body, indent=1))
        os.replace(temporary, path)

    def read_decision(self, epoch: int) -> dict[str, Any] | None:
        """A generation's decisions, or None while they are not made."""
        try:
            return json.loads(self.decision_path(epoch).read_text())
        except FileNotFoundError:
            return None

    def exploit_for(self, epoch: int, index: int) -> Exploit | None | bool:
        """Trial ``index``'s exploit at ``epoch``; None when it goes on as it is; False while
        the generation is not decided."""
        decision = self.read_decision(epoch)
        if decision is None:
            return False
        for data in decision["exploits"]:
            if int(data["trial"]) == index:
                return Exploit.from_json(data)
        return None

    def decided_epochs(self) -> list[int]:
        folder = self.folder / "decisions"
        if not folder.is_dir():
            return []
        found = (_DECISION.fullmatch(p.name) for p in folder.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def lineage(self) -> list[Exploit]:
        """Every exploit of the sweep so far, in epoch then trial order."""
        events: list[Exploit] = []
        for epoch in self.decided_epochs():
            decision = self.read_decision(epoch) or {"exploits": []}
            events.extend(Exploit.from_json(data) for data in decision["exploits"])
        return events


@dataclass(frozen=True)
class PbtWorkerPlan:
    """What a trial's worker needs of a PBT sweep: where the files are, the boundary epochs,
    and the sampled parameters, whose current values it reports at each boundary and, as
    ``hp.NAME``, with each epoch (the schedule; a copy's shape shows there too)."""

    files: PbtFiles
    boundaries: frozenset[int]
    sampled: tuple[str, ...]

    def is_boundary(self, epoch: int) -> bool:
        return epoch in self.boundaries

    def hp_metrics(self, config: Mapping[str, Any]) -> dict[str, float]:
        """The ``hp.NAME`` metrics of an epoch trained with ``config``: its numeric values."""
        return {
            f"{HP_PREFIX}{name}": float(value)
            for name in self.sampled
            if isinstance(value := config.get(name), (int, float)) and not isinstance(value, bool)
        }

    def values_of(self, config: Mapping[str, Any]) -> list[list[Any]]:
        """A trial's current sampled values, as its step result carries them (``PBT_VALUES``)."""
        return [[name, config.get(name)] for name in self.sampled]
