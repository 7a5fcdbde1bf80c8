"""``caviar panda --from RUN_ID``: a sweep's trial, continued as a panda session.

RUN_ID is a trial's MLflow run (or a sweep's parent run: its best trial). The sweep's spec is
read back from its parent run's artifact; the trial's newest checkpoint is the one the sweep's
journal names (``<storage>/<spec name>/<sweep id>/journal.jsonl``), so a trial continues from
exactly where it stopped, on the session's epoch axis (its epochs keep their numbers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from orchestrator.panda.changes import PandaError
from orchestrator.panda.control import storage_root
from orchestrator.panda.trainer import encode
from orchestrator.spec import SweepSpec, parse_spec_text
from orchestrator.store.journal import JOURNAL, read_journal
from orchestrator.store.panda_runs import read_trial_run

# What a trial actor's checkpoint folder holds (orchestrator/engine/trial_actor.py STATE_FILE;
# not imported: that module imports Tune).
TRIAL_STATE_FILE = "state.pt"


@dataclass
class Origin:
    """Where a session starts when it is not a spec's new model: a sweep trial continued from
    its checkpoint (``--from``), or a PBT trial's schedule trained again (``--replay``:
    no checkpoint; ``schedule`` maps an epoch to the changes made before training it)."""

    spec: SweepSpec
    spec_text: str
    spec_filename: str
    config: dict[str, Any]
    checkpoint: bytes | None
    start_epoch: int
    from_run: str
    schedule: dict[int, dict[str, Any]] = field(default_factory=dict)
    replay_of: int | None = None  # the PBT trial replayed (its index)
    target: float | None = None  # that trial's final objective


def continue_from(
    run_id: str, tracking_uri: str | None, more_epochs: int | None, spec_dir: Path
) -> Origin:
    trial = read_trial_run(run_id, tracking_uri)
    if trial is None:
        raise PandaError(
            f"no sweep trial with MLflow run id {run_id!r} in the store (pass a trial's run "
            "id, or a sweep's parent run id for its best trial; --tracking-uri to pick the store)"
        )
    spec = parse_spec_text(trial.spec_text, trial.spec_filename, spec_dir=spec_dir)
    sweep_dir = storage_root(spec).parent / trial.sweep_id
    record = read_journal(sweep_dir / JOURNAL).trials.get(trial.trial_index)
    if record is None or record.checkpoint is None:
        raise PandaError(
            f"trial #{trial.trial_index} of sweep {trial.sweep_id} left no checkpoint in "
            f"{sweep_dir} (run from the folder the sweep ran in, or set CAVIAR_STORAGE_PATH)"
        )
    state_file = Path(record.checkpoint) / TRIAL_STATE_FILE
    if not state_file.is_file():
        raise PandaError(f"the trial's checkpoint {state_file} is not on this machine")
    state = torch.load(state_file, map_location="cpu", weights_only=False)
    start = int(state["session"]["epoch"])
    if more_epochs is not None and more_epochs < 1:
        raise PandaError(f"--epochs must be >= 1, got {more_epochs}")
    config = {**state["config"], "epochs": start + (more_epochs or spec.max_epochs)}
    return Origin(
        spec,
        trial.spec_text,
        trial.spec_filename,
        config,
        encode(config, state["session"]),
        start,
        trial.run_id,
    )
