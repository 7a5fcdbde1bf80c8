"""Finding a sweep again: the marker each sweep keeps in its Ray results folder.

``caviar run`` writes ``caviar_sweep.json`` next to Ray's experiment state when a sweep
starts and marks it finished when it ends. A marker that is not finished is a sweep that was
interrupted (killed, crashed, Ctrl-C): ``--resume`` continues the newest one, and a plain run
refuses to start beside it rather than silently leave it behind. Both run under the sweep's
lock (``sweep_lock``), so a marker still ``running`` here belongs to a driver that is gone.

The marker keeps the spec as it was run (its canonical form), so a resume with a changed spec
is refused naming each changed field with its old and new value.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from orchestrator.errors import CaviarError
from orchestrator.resume import resume_command, submitted

MARKER = "caviar_sweep.json"
# A run whose marker still says this was stopped after its marker was written and before its
# parent run was recorded in it: nothing of it was trained, and MLflow may hold that parent
# (RUNNING, never marked). store/lifecycle.py discards such a run before starting again.
STARTING = "starting"


class ResumeError(CaviarError):
    """Resuming is impossible, or a plain run would leave an unfinished sweep behind."""

    exit_code = 2


@dataclass
class SweepMarker:
    sweep_id: str
    status: str  # starting | running | finished | failed | interrupted
    parent_run_id: str  # "" while starting: written before the parent run is created
    tracking_uri: str
    experiment: str
    spec_hash: str
    # The spec's fields that decide its results, as run (SweepSpec.results_fields); None in
    # markers written before caviar kept it.
    spec: dict[str, Any] | None = None


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
        status = "interrupted" if marker.status == "running" else marker.status
        raise ResumeError(
            f"an unfinished sweep ({marker.sweep_id}, {status}) is in {run_dir}.\n"
            f"  - to continue it:      {resume_command(spec_path)}\n"
            f"  - to start a new one:  give the spec another name (or storage.path), "
            f"or remove {run_dir}"
        )


def pick_for_resume(
    storage_root: Path, spec_hash: str, spec: dict[str, Any] | None = None
) -> tuple[Path, SweepMarker]:
    pending = unfinished(storage_root)
    if not pending:
        raise ResumeError(
            f"nothing to resume: no unfinished sweep under {storage_root}; "
            f"{'submit' if submitted() else 'run'} without --resume"
        )
    run_dir, marker = pending[0]
    if marker.spec_hash != spec_hash:
        if marker.spec is not None and spec is not None:
            changes = "\n".join(f"  - {line}" for line in spec_changes(marker.spec, spec))
        else:
            changes = f"  - (hash {marker.spec_hash}, now {spec_hash})"
        raise ResumeError(
            f"the spec changed since sweep {marker.sweep_id} started; a resumed sweep must run "
            f"the same spec:\n{changes}\nRestore those fields, or run the new spec under "
            "another name"
        )
    return run_dir, marker


def spec_changes(old: Any, new: Any, path: str = "") -> list[str]:
    """Each changed field as ``path: old -> new`` (nested mappings walked; lists compared whole)."""
    if isinstance(old, dict) and isinstance(new, dict):
        found: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            where = f"{path}.{key}" if path else str(key)
            if key not in new:
                found.append(f"{where}: {_shown(old[key])} -> (removed)")
            elif key not in old:
                found.append(f"{where}: (absent) -> {_shown(new[key])}")
            else:
                found += spec_changes(old[key], new[key], where)
        return found
    return [] if old == new else [f"{path}: {_shown(old)} -> {_shown(new)}"]


def _shown(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."
