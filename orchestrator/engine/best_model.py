"""The sweep's best trial: ranked ASHA-aware, rebuilt from its checkpoint (or trained again when
it left none), scored once on the held-out test split and logged as the sweep's model."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

from ray import tune

from orchestrator.engine.pack_run import MEMBER_FILE
from orchestrator.engine.sweep import MEMBERS_DIR, Sweep, milestones
from orchestrator.engine.trial_actor import load_trial_state
from orchestrator.search.ranking import ranked
from orchestrator.spec import SweepSpec
from orchestrator.store.lifecycle import RunLifecycle
from orchestrator.sweep_result import SweepResult
from trainables import DataSplits, TensorSplits, get_trainable

TOP_TRIALS_COMPARED = 5  # the summary's compare link shows this many of the best trials


def rank_and_test(sweep: Sweep, run: RunLifecycle, result: SweepResult) -> None:
    """The best trial, ranked ASHA-aware, evaluated once on the held-out test split."""
    spec, tracker = sweep.spec, sweep.tracker
    best = ranked(result.records, spec.objective.metric, spec.mode, milestones(spec))
    if not best:
        return
    result.best = best[0]
    tracker.flush()
    result.best_run_id = tracker.child_run_id(str(result.best.index))
    top = (tracker.child_run_id(str(r.index)) for r in best[:TOP_TRIALS_COMPARED])
    result.ranked_run_ids = [run_id for run_id in top if run_id is not None]
    model = _score_best(spec, sweep.data, result, sweep.stream)
    result.model_uri = run.log_model(model, sweep.data.x_test[:5])


def _score_best(
    spec: SweepSpec, data: DataSplits, result: SweepResult, stream: TextIO | None = None
) -> Any:
    """The best trial rebuilt from its last checkpoint and scored once on the test split
    (``result.test_loss``, ``result.test_accuracy``); returns its network, in eval mode.

    A best trial with no readable checkpoint (lost to a kill or a full disk) is trained
    again from its configuration for the epochs it trained: the sweep still ends with a
    tested model, and the summary says so."""
    assert result.best is not None
    best = result.best
    checkpoint = best.checkpoint
    saved_on_leaving = result.storage_dir / MEMBERS_DIR
    if best.pack is not None and (saved_on_leaving / MEMBER_FILE.format(index=best.index)).exists():
        checkpoint = str(saved_on_leaving)  # a killed driver may not have journaled it
    tensors = TensorSplits.from_splits(data, "cpu")
    definition = get_trainable(spec.trainable)
    state = _readable_state(checkpoint, best.index)
    if state is not None:
        session = definition.make_session(state["config"], tensors, "cpu")
        session.load_state_dict(state["session"])
    else:
        print(
            f"caviar: the best trial #{best.index} left no readable checkpoint; training it "
            f"again from its configuration ({best.epochs} epochs) to test it",
            file=stream or sys.stdout,
            flush=True,
        )
        session = definition.make_session(best.config, tensors, "cpu")
        for _ in range(best.epochs):
            session.step()
    result.test_loss, result.test_accuracy = session.evaluate(tensors.x_test, tensors.y_test)
    return session.model.eval()


def _readable_state(checkpoint: str | None, index: int) -> dict[str, Any] | None:
    """The trial's state from its checkpoint; None when there is none or it cannot be read."""
    if checkpoint is None:
        return None
    try:
        with tune.Checkpoint.from_directory(checkpoint).as_directory() as directory:
            return load_trial_state(directory, index)
    except (OSError, RuntimeError, EOFError, KeyError) as error:
        logging.getLogger("caviar").warning("checkpoint %s unreadable: %s", checkpoint, error)
        return None
