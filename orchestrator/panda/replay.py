"""``caviar panda --replay RUN_ID``: a population-based training trial's schedule, trained
again from scratch as one panda session.

A PBT trial's final weights were trained along a line of trials: its own epochs since its
last copy, before that its donor's, and so on back to epoch 0 (``search.pbt.line_of``). Each
copy carried the weights, the optimizer's moments, BN's statistics and the batch order, so
the line is one continuous training with values that change at the copies. The replay starts
the line's first trial's configuration from scratch and, at each copy's epoch, changes the
values to what the line trained with next: a panda session whose segments are the schedule
(no babysitting rules: the schedule decides). Trained on the same data with the same seeds, it
comes back to the PBT trial's weights; the summary says how close its final objective came.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.engine.pbt_files import PbtFiles
from orchestrator.panda.changes import PandaError, adjustable_parameters
from orchestrator.panda.control import storage_root
from orchestrator.panda.origin import Origin
from orchestrator.search.pbt import line_of
from orchestrator.spec import PbtScheduler, parse_spec_text
from orchestrator.store.journal import JOURNAL, read_journal
from orchestrator.store.panda_runs import read_trial_run


def replay_from(run_id: str, tracking_uri: str | None, spec_dir: Path) -> Origin:
    """The session that replays PBT trial ``run_id``'s line (a sweep's run id: its best)."""
    trial = read_trial_run(run_id, tracking_uri)
    if trial is None:
        raise PandaError(
            f"no sweep trial with MLflow run id {run_id!r} in the store (pass a PBT trial's run "
            "id, or a PBT sweep's parent run id for its best trial; --tracking-uri to pick the "
            "store)"
        )
    spec = parse_spec_text(trial.spec_text, trial.spec_filename, spec_dir=spec_dir)
    if not isinstance(spec.scheduler, PbtScheduler):
        raise PandaError(
            f"run {run_id} is a trial of a {spec.scheduler.kind} sweep: --replay trains a "
            "population-based training (scheduler kind pbt) trial's schedule again; to go on "
            "training this trial use caviar panda --from"
        )
    sweep_dir = storage_root(spec).parent / trial.sweep_id
    records = read_journal(sweep_dir / JOURNAL).trials
    record = records.get(trial.trial_index)
    if record is None:
        raise PandaError(
            f"sweep {trial.sweep_id}'s journal is not in {sweep_dir} (run from the folder the "
            "sweep ran in, or set CAVIAR_STORAGE_PATH)"
        )
    exploits = PbtFiles(sweep_dir).lineage()
    initial = {index: dict(r.config) for index, r in records.items()}
    line = line_of(trial.trial_index, record.epochs, exploits, initial)
    config = {**initial[line[0].trial], "epochs": record.epochs}
    adjustable = adjustable_parameters(spec.trainable)
    schedule: dict[int, dict[str, Any]] = {}
    current = dict(config)
    for segment in line[1:]:
        changes = {
            k: v for k, v in segment.values.items() if k in adjustable and current.get(k) != v
        }
        if changes:
            schedule[segment.start] = changes
            current.update(changes)
    target = record.metric(spec.objective.metric)
    return Origin(
        spec,
        trial.spec_text,
        trial.spec_filename,
        config,
        None,
        0,
        trial.run_id,
        schedule=schedule,
        replay_of=trial.trial_index,
        target=target,
    )
