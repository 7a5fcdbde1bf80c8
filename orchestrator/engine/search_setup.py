"""The searcher a sweep gives Ray Tune: planned from the spec, sized to the cluster."""

from __future__ import annotations

from ray.tune.search import ConcurrencyLimiter, Searcher

from orchestrator.engine.searcher import RoundSearcher
from orchestrator.search.packing import Packer
from orchestrator.search.plan import RoundPlan
from orchestrator.spec import PbtScheduler, SweepSpec


def round_plan(spec: SweepSpec, milestones: list[int]) -> RoundPlan:
    search = spec.search
    return RoundPlan(
        rounds=search.rounds_count(),
        samples_per_point=search.samples_per_point(),
        seed=search.seed,
        keep_top=search.keep_top_value(),
        margin=search.margin_value(),
        metric=spec.objective.metric,
        mode=spec.mode,
        milestones=tuple(milestones),
        budget=spec.max_epochs,
        tpe=search.tpe_settings(),
        explore=search.explore_value(),
        keep_from=search.keep_from_value(),
        round_sampler=search.round_sampler_settings(),
    )


def build_searcher(
    spec: SweepSpec,
    slots: int,
    milestones: list[int],
    sweep_id: str | None = None,
    packer: Packer | None = None,
) -> tuple[Searcher, RoundSearcher]:
    """The searcher to give Ray, and the round searcher inside it (for trial indices, rounds).

    Always behind a ``ConcurrencyLimiter``: for any searcher but its own, Tune keeps a single
    trial pending unless a limiter says how many may run, which on a 2-core machine meant one
    trial at a time. ``slots`` is how many trials the cluster fits at once.

    The limit is :func:`live_trials` (a trial waiting per slot), not ``slots``: see there.
    """
    searcher = RoundSearcher(
        spec.search_space(),
        round_plan(spec, milestones),
        sweep_id=sweep_id,
        packer=packer,
        slots=slots,
        index_in_config=isinstance(spec.scheduler, PbtScheduler),
    )
    limit = spec.search.max_concurrent or live_trials(slots)
    if isinstance(spec.scheduler, PbtScheduler):
        # The whole population is in flight: its trials wait for each other, paused, at
        # every boundary (resources still cap how many train at once).
        limit = max(limit, spec.num_trials())
    return ConcurrencyLimiter(searcher, max_concurrent=max(1, limit)), searcher


def live_trials(slots: int) -> int:
    """Trials Tune may hold at once: one running and one waiting per slot.

    Tune keeps a finished trial's actor for reuse only while a trial waits to take it (or
    while it is the only actor cached), and it gives a warm actor to a waiting trial in
    preference to that trial's own actor still starting, which it then kills. Both go wrong
    when the next trial is asked for only after one ends (a limit of ``slots``): an actor that
    finishes while another sits cached is stopped, and a trial whose actor is starting takes
    the warm one instead (``trial_choice.py``). Either way a new actor pays a process start and
    torch's import while its slot trains nothing. A waiting trial per slot
    avoids both. The waiting trials are drawn in the same order (the plan is fixed by the
    seed) and run only when a slot frees; the cluster's resources still cap how many run.
    """
    return 2 * max(1, slots)


def concurrent_slots(
    cluster: dict[str, float], cpus_per_trial: float, gpus_per_trial: float
) -> int:
    """How many trials of this size the cluster's resources hold at once."""
    fits = [cluster.get("CPU", 1.0) / cpus_per_trial]
    if gpus_per_trial > 0:
        fits.append(cluster.get("GPU", 0.0) / gpus_per_trial)
    return max(1, int(min(fits) + 1e-9))
