"""A panda session read back from its journal: the lineage and the commands it answered.

The journal is the sweep's (``orchestrator/store/journal.py``): ``read_journal`` gives each
segment's :class:`~orchestrator.trials.Trial` (config, epochs, checkpoint, outcome) exactly as
for a sweep's trials; the panda fields of the same lines (parent segment, start epoch, reason,
who asked, what changed, why it ended) and the ``command`` answers are read here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.panda.lineage import Lineage, Pause, Segment
from orchestrator.store.journal import JOURNAL, read_journal


@dataclass
class SessionRecord:
    lineage: Lineage
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)  # command id -> event
    pauses: list[Pause] = field(default_factory=list)


def read_session(folder: Path) -> SessionRecord:
    path = folder / JOURNAL
    state = read_journal(path)
    lineage = Lineage()
    answers: dict[str, dict[str, Any]] = {}
    pauses: list[Pause] = []
    ended_by: dict[int, str] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue  # the cut last line (read_journal already refused a damaged middle)
            kind = event.get("e")
            if kind == "trial" and int(event["i"]) in state.trials:
                trial = state.trials[int(event["i"])]
                parent = event.get("parent")
                lineage.add(
                    Segment(
                        trial,
                        None if parent is None else int(parent),
                        int(event.get("start", 0)),
                        str(event.get("reason", "start")),
                        str(event.get("by", "caviar")),
                        dict(event.get("changes") or {}),
                    )
                )
            elif kind == "end":
                ended_by[int(event["i"])] = str(event.get("ended_by", ""))
            elif kind == "command":
                answers[str(event["id"])] = event
            elif kind == "pause":
                pauses.append(Pause(int(event.get("epoch", 0)), str(event.get("by", "user"))))
            elif kind == "resume" and pauses:
                pauses[-1].seconds = float(event.get("paused_s") or 0.0)
    for index, how in ended_by.items():
        if index in lineage.segments:
            lineage.segments[index].ended_by = how
    return SessionRecord(lineage, answers, pauses)
