"""The Tune pieces of one sweep: the Tuner (trainable, resources, checkpoints, failures), the
scheduler the spec names, and the stopper that ends Tune when the sweep must halt."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.schedulers import TrialScheduler

from orchestrator.engine import live
from orchestrator.engine.observer import SweepObserver
from orchestrator.engine.pbt_files import PbtWorkerPlan
from orchestrator.engine.scheduler import HalvingScheduler
from orchestrator.engine.sweep import MEMBERS_DIR, TIMEOUTS_DIR, Sweep, trainable_path
from orchestrator.engine.trial_actor import CaviarTrainable
from orchestrator.engine.trial_choice import NewestFirstFIFO
from orchestrator.search.ranking import asha_rung_epochs
from orchestrator.spec import AshaScheduler, PbtScheduler, SweepSpec


def build_tuner(
    sweep: Sweep,
    search_alg: Any,
    scheduler: TrialScheduler,
    observer: SweepObserver,
    num_samples: int,
    mailbox: Any = None,
    pbt: PbtWorkerPlan | None = None,
) -> tune.Tuner:
    spec = sweep.spec
    trainable = tune.with_resources(
        tune.with_parameters(
            CaviarTrainable,
            data=sweep.data,
            trainable_name=spec.trainable,
            trainable_path=trainable_path(sweep),
            checkpoint_every_s=spec.storage.checkpoint_every_s,
            report_every_s=spec.storage.report_every_s,
            report_at=_report_at(spec),
            mailbox=mailbox,
            member_dir=str(sweep.run_dir / MEMBERS_DIR),
            epoch_timeout_s=spec.resources.epoch_timeout_s,
            timeout_dir=str(sweep.run_dir / TIMEOUTS_DIR),
            pbt=pbt,
        ),
        {"cpu": spec.resources.cpus_per_trial, "gpu": spec.resources.gpus_per_trial},
    )
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=spec.objective.metric,
            mode=spec.mode,
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=num_samples,
            reuse_actors=True,
            trial_dirname_creator=_trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=_tune_session_name(sweep.run_dir),
            storage_path=str(sweep.run_dir),
            callbacks=[observer],
            stop=_HaltStopper(sweep.sweep_id),
            verbose=0,
            checkpoint_config=tune.CheckpointConfig(
                checkpoint_frequency=0,  # the trial asks for one by time
                checkpoint_at_end=True,
                # 2, not 1: Tune forces an experiment snapshot whenever a trial has
                # saved num_to_keep checkpoints since the last one; at 1, one per trial.
                # The journal names the newest, which is never the one removed.
                num_to_keep=2,
            ),
            failure_config=tune.FailureConfig(max_failures=spec.storage.max_failures),
        ),
    )


class _HaltStopper(tune.Stopper):
    """Ends every trial once the live observer says the sweep must halt (a full disk, a
    journal it cannot write). Found by the sweep's id: Tune keeps a pickled copy of this."""

    def __init__(self, sweep_id: str) -> None:
        self.sweep_id = sweep_id

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        found = live.lookup(self.sweep_id)
        return bool(found and found.observer and found.observer.halted() is not None)


def _trial_dirname(trial: Any) -> str:
    """Short and free of configuration values (which may hold paths): the trial's id."""
    return f"trial_{trial.trial_id}"


def _tune_session_name(run_dir: Path) -> str:
    """Each run of the sweep (the first, then one per resume) gets its own Tune folder."""
    taken = {p.name for p in run_dir.glob("tune-*")}
    number = 1
    while f"tune-{number}" in taken:
        number += 1
    return f"tune-{number}"


def uses_halving(spec: SweepSpec) -> bool:
    return isinstance(spec.scheduler, AshaScheduler)


def scheduler_for(
    spec: SweepSpec,
    index_of: Mapping[str, int],
    members_of: Mapping[str, Sequence[int]] | None = None,
    mailbox: Any = None,
) -> TrialScheduler:
    if isinstance(spec.scheduler, AshaScheduler):
        return HalvingScheduler(
            index_of,
            members_of=members_of,
            mailbox=mailbox,
            seed=spec.search.seed,
            metric=spec.objective.metric,
            mode=spec.mode,
            time_attr="epoch",
            max_t=spec.max_epochs,
            grace_period=spec.scheduler.grace_period,
            reduction_factor=spec.scheduler.reduction_factor,
            brackets=spec.scheduler.brackets,
        )
    return NewestFirstFIFO()


def _report_at(spec: SweepSpec) -> tuple[int, ...]:
    """The epochs a trial reports at once, whatever ``report_every_s``: ASHA's rungs, or
    PBT's generation boundaries."""
    if isinstance(spec.scheduler, PbtScheduler):
        return tuple(range(spec.scheduler.interval, spec.max_epochs, spec.scheduler.interval))
    if isinstance(spec.scheduler, AshaScheduler):
        return asha_rung_epochs(
            spec.scheduler.grace_period, spec.scheduler.reduction_factor, spec.max_epochs
        )
    return ()
