"""Finding a sweep again: the marker each sweep keeps in its Ray results folder.

``caviar run`` writes ``caviar_sweep.json`` next to Ray's experiment state when a sweep
starts and marks it finished when it ends. A marker that is not finished is a sweep that was
interrupted (killed, crashed, Ctrl-C): ``--resume`` continues the newest one, and a plain run
refuses to start beside it rather than silently leave it behind.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from orchestrator.errors import CaviarError

MARKER = "caviar_sweep.json"


class ResumeError(CaviarError):
    """Resuming is impossible, or a plain run would leave an unfinished sweep behind."""

    exit_code = 2


@dataclass
class SweepMarker:
    sweep_id: str
    status: str  # running | finished | failed | interrupted
    parent_run_id: str
    tracking_uri: str
    experiment: str
    spec_hash: str


def write_marker(run_dir: Path, marker: SweepMarker) -> None:
    """Atomically (write then rename), so a kill never leaves half a marker."""
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".{MARKER}.tmp"
    tmp.write_text(json.dumps(asdict(marker), indent=2))
    os.replace(tmp, run_dir / MARKER)


def read_marker(run_dir: Path) -> SweepMarker | None:
    try:
        return SweepMarker(**json.loads((run_dir / MARKER).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def unfinished(storage_root: Path) -> list[tuple[Path, SweepMarker]]:
    """Interrupted sweeps under this spec's storage folder, newest first."""
    found = []
    if storage_root.is_dir():
        for run_dir in storage_root.iterdir():
            marker = read_marker(run_dir) if run_dir.is_dir() else None
            if marker is not None and marker.status != "finished":
                found.append((run_dir, marker))
    return sorted(found, key=lambda item: item[1].sweep_id, reverse=True)


def refuse_if_unfinished(storage_root: Path, spec_path: str) -> None:
    pending = unfinished(storage_root)
    if pending:
        run_dir, marker = pending[0]
        raise ResumeError(
            f"an unfinished sweep ({marker.sweep_id}, {marker.status}) is in {run_dir}.\n"
            f"  - to continue it:      caviar run {spec_path} --resume\n"
            f"  - to start a new one:  give the spec another name (or storage.path), "
            f"or remove {run_dir}"
        )


def pick_for_resume(storage_root: Path, spec_hash: str) -> tuple[Path, SweepMarker]:
    pending = unfinished(storage_root)
    if not pending:
        raise ResumeError(
            f"nothing to resume: no unfinished sweep under {storage_root}; run without --resume"
        )
    run_dir, marker = pending[0]
    if marker.spec_hash != spec_hash:
        raise ResumeError(
            f"the spec changed since sweep {marker.sweep_id} started (hash {marker.spec_hash}, "
            f"now {spec_hash}); a resumed sweep must run the same spec. Restore the spec, or "
            "run the new one under another name"
        )
    return run_dir, marker
