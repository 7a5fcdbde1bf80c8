"""A population-based training sweep's pieces, from its spec: the plan, what each worker
needs, the Tune scheduler, and where each decided generation is told (journal, MLflow parent
and children, terminal)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from orchestrator.engine import live
from orchestrator.engine.pbt_files import PbtFiles, PbtWorkerPlan
from orchestrator.engine.pbt_scheduler import PbtTrialScheduler
from orchestrator.engine.sweep import Sweep, trainable_path
from orchestrator.report.page import format_value
from orchestrator.search.pbt import Exploit, PbtPlan, line_of, perturbable
from orchestrator.spec import PbtScheduler, SweepSpec
from orchestrator.store import layout
from orchestrator.store.journal import Journal, JournalWriteError
from orchestrator.trials import HP_PREFIX, Trial
from trainables import get_trainable
from trainables.adjustable import adjustable_of


def uses_pbt(spec: SweepSpec) -> bool:
    return isinstance(spec.scheduler, PbtScheduler)


def pbt_plan(spec: SweepSpec, search_path: tuple[str, ...] = ()) -> PbtPlan:
    scheduler = spec.scheduler
    assert isinstance(scheduler, PbtScheduler)
    definition = get_trainable(spec.trainable, search_path)
    shape = definition.packing.shape_fields if definition.packing is not None else ()
    return PbtPlan(
        interval=scheduler.interval,
        max_epochs=spec.max_epochs,
        quantile=scheduler.quantile,
        factors=tuple(scheduler.perturbation.factors),  # type: ignore[arg-type]
        resample_probability=scheduler.perturbation.resample_probability,
        seed=spec.search.seed,
        mode=spec.mode,
        perturbed=perturbable(spec.search_space().sampled, adjustable_of(definition), shape),
    )


def worker_plan(spec: SweepSpec, plan: PbtPlan, files: PbtFiles) -> PbtWorkerPlan:
    return PbtWorkerPlan(
        files=files,
        boundaries=frozenset(plan.boundaries()),
        sampled=tuple(d.name for d in spec.search_space().sampled),
    )


def hp_metrics(spec: SweepSpec) -> tuple[str, ...]:
    """The per-epoch metrics that show each sampled parameter's schedule."""
    return tuple(f"{HP_PREFIX}{domain.name}" for domain in spec.search_space().sampled)


def pbt_scheduler(
    spec: SweepSpec,
    plan: PbtPlan,
    files: PbtFiles,
    index_of: Mapping[str, int],
    ended: Mapping[int, int] | None = None,
    members_of: Mapping[str, Sequence[int]] | None = None,
) -> PbtTrialScheduler:
    return PbtTrialScheduler(
        index_of,
        plan,
        spec.num_trials(),
        files,
        metric=spec.objective.metric,
        mode=spec.mode,
        ended=ended,
        members_of=members_of,
    )


def ended_at(trials: Mapping[int, Trial]) -> dict[int, int]:
    """A resumed sweep's ended trials, with the epoch each ended at."""
    return {index: trial.epochs for index, trial in trials.items() if trial.state.ended}


class GenerationLog:
    """Tells each decided generation: a journal line, the parent's ``pbt/lineage.json`` (the
    whole lineage so far), a terminal note per copy; and each trial's copies as tags of its
    child run when it ends."""

    def __init__(self, sweep_id: str, files: PbtFiles, journal: Journal | None = None) -> None:
        self.sweep_id = sweep_id
        self.files = files
        self.journal = journal
        self.exploits: list[Exploit] = files.lineage()  # a resumed sweep's, so far

    def generation(self, epoch: int, exploits: list[Exploit]) -> None:
        self.exploits.extend(exploits)
        if self.journal is not None:
            try:
                self.journal.append("pbt", epoch=epoch, exploits=[e.to_json() for e in exploits])
            except JournalWriteError:
                pass  # kept as the journal's failure: the sweep's stopper halts it
        found = live.lookup(self.sweep_id)
        if found is None:
            return
        found.tracker.parent_update(
            json_artifacts={layout.PBT_LINEAGE_ARTIFACT: [e.to_json() for e in self.exploits]}
        )
        for exploit in exploits:
            changed = ", ".join(
                f"{name} {format_value(exploit.before.get(name))} -> {format_value(value)}"
                for name, value in exploit.after.items()
                if value != exploit.before.get(name)
            )
            found.progress.note(
                f"caviar: epoch {epoch}: trial {exploit.trial} copies trial "
                f"{exploit.from_trial}" + (f" ({changed})" if changed else "")
            )

    def end_tags(self, trial: Trial) -> dict[str, str]:
        """The copies of ``trial`` and the trial its weights descend from, for its run."""
        mine = [e for e in self.exploits if e.trial == trial.index]
        if not mine:
            return {}
        initial = {trial.index: {}}
        initial.update({e.from_trial: {} for e in self.exploits})
        origin = line_of(trial.index, max(trial.epochs, 1), self.exploits, initial)[0].trial
        return {
            layout.PBT_COPIES: ", ".join(f"{e.epoch}<-{e.from_trial}" for e in mine),
            layout.PBT_LINE_FROM: str(origin),
        }


def pbt_summary(
    files: PbtFiles, records: list[Trial], best: Trial | None, names: tuple[str, ...]
) -> list[str]:
    """The summary's PBT lines: how many copies, and the schedule that made the best trial's
    weights (its line: the trials its weights came through, each with its ``names``)."""
    exploits = files.lineage()
    generations = len(files.decided_epochs())
    lines = [f"  pbt:             {len(exploits)} copies in {generations} generations"]
    if best is None:
        return lines
    initial = {r.index: r.config for r in records}
    line = line_of(best.index, best.epochs, exploits, initial)
    if line[0].trial != best.index:
        lines[0] += f"; the best trial's weights come from trial {line[0].trial}'s"
    lines.append("  best's schedule:")
    for segment in line:
        shown = ", ".join(f"{k} {format_value(segment.values.get(k))}" for k in names)
        lines.append(
            f"    epochs {segment.start + 1}-{segment.end}: trial {segment.trial} ({shown})"
        )
    return lines


class PbtSweep:
    """A population-based training sweep's plan, files and generation log."""

    def __init__(self, sweep: Sweep) -> None:
        self.spec = sweep.spec
        self.plan = pbt_plan(sweep.spec, trainable_path(sweep))
        self.files = PbtFiles(sweep.run_dir)
        self.worker = worker_plan(sweep.spec, self.plan, self.files)
        self.log = GenerationLog(sweep.sweep_id, self.files)

    def scheduler(
        self,
        index_of: Mapping[str, int],
        ended: Mapping[int, int],
        observer: Any,
        journal: Journal,
        members_of: Mapping[str, Sequence[int]] | None = None,
    ) -> PbtTrialScheduler:
        self.log.journal = journal
        scheduler = pbt_scheduler(self.spec, self.plan, self.files, index_of, ended, members_of)
        scheduler.on_generation = self.log.generation
        scheduler.on_pause = observer.stalls.ended  # a paused trial's silence is no stall
        return scheduler
