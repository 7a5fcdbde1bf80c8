"""Which waiting trial Tune starts next: the newest, so a warm actor never evicts a starting one.

Tune starts the trial its scheduler chooses, and if that trial already has an actor of its own
still starting (a process start and torch's import), while a finished trial's
warm actor is free, Tune gives the trial the warm actor and kills the starting one. Ray Tune's
FIFO choice (the oldest waiting trial) picks exactly that trial, the one whose actor was asked
for first. With trials shorter than an actor's start (ASHA stops most after two epochs of
milliseconds), the warm actor wins every time: a new actor is started for the next trial,
killed when the warm one frees up again, and so on, each start burning a core for seconds
while that slot trains nothing. Seen on the benchmark sweep (docs/performance.md):
actor processes instead of 2, one trial running at a time, the sweep twice as long.

Choosing the newest waiting trial gives the warm actor to a trial whose own actor is only
queued for resources (nothing started, nothing lost), and the starting actor keeps its trial.
It needs a second waiting trial, which
:func:`orchestrator.engine.search_setup.live_trials` provides.

The cost is order, not work: a trial that waits while newer ones take the warm actors would
wait until no newer trial waits, the end of its round. So a trial waiting longer than
``PASSED_OVER_LIMIT_S`` is chosen first, oldest first: by then any actor started for it is
long up (nothing is killed), or it only had a queued one (nothing is lost). On a sweep shorter
than that (the benchmark's runs for ~8 s), the passed-over trials still run last (trials 1 and
2 of 64); on real sweeps they start at most that much later. What runs is unchanged; ASHA
judges those trials against the rungs as they are when they run.

The choice reads the trials from Tune's controller (``TuneController.get_trials``, a method of
Tune's internal execution loop that its own schedulers call), so it is a speed-up
(``orchestrator.speedups``): with ``CAVIAR_NO_SPEEDUPS=1`` Tune's own FIFO choice decides.
"""

from __future__ import annotations

import time
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler

from orchestrator import speedups

# Longer than any actor takes to start (a process, torch, Tune; CUDA's initialisation on a
# GPU node), short against a real sweep.
PASSED_OVER_LIMIT_S = 30.0


class NewestPendingFirst:
    """A scheduler mixin: ``choose_trial_to_run`` returns the newest PENDING trial, or the
    oldest one once it has waited ``PASSED_OVER_LIMIT_S``."""

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        if not speedups.enabled():  # Tune's own choice: the oldest waiting trial
            return FIFOScheduler.choose_trial_to_run(self, tune_controller)  # type: ignore[arg-type]
        trials = self._not_terminated(tune_controller.get_trials())
        pending = [trial for trial in trials if trial.status == Trial.PENDING]
        if pending:
            oldest = pending[0]
            if self._waited(pending, time.monotonic()) >= PASSED_OVER_LIMIT_S:
                return oldest
            return pending[-1]
        for trial in trials:
            if trial.status == Trial.PAUSED:
                return trial
        return None

    def _not_terminated(self, trials: list[Trial]) -> list[Trial]:
        """``trials`` (Tune's, oldest first) without the TERMINATED ones, in the same order.

        Tune calls this choice at every step of its loop, and its list holds every trial of
        the sweep: read whole, each step would cost O(trials). So the trials still to end
        are kept here, and each call reads those and the ones Tune appended since the last
        call. A TERMINATED trial is dropped for good: it never waits again (Tune requeues a
        trial only after an error, from ERROR, which is kept). Kept per list (by identity);
        state made on first use, as ``_pending_since``.
        """
        seen = self.__dict__.setdefault("_unended", {"list": None, "read": 0, "trials": []})
        if seen["list"] != id(trials) or seen["read"] > len(trials):
            seen.update(list=id(trials), read=0, trials=[])
        kept = [t for t in seen["trials"] if t.status != Trial.TERMINATED]
        kept += [t for t in trials[seen["read"] :] if t.status != Trial.TERMINATED]
        seen["read"], seen["trials"] = len(trials), kept
        return kept

    def _waited(self, pending: list[Trial], now: float) -> float:
        """How long the oldest of ``pending`` has been waiting (first seen here)."""
        # A mixin with no __init__ of its own (ASHA's and FIFO's run): state made on first use.
        since: dict[str, float] = self.__dict__.setdefault("_pending_since", {})
        waiting = {trial.trial_id for trial in pending}
        for trial_id in [t for t in since if t not in waiting]:
            del since[trial_id]
        for trial in pending:
            since.setdefault(trial.trial_id, now)
        return now - since[pending[0].trial_id]


class NewestFirstFIFO(NewestPendingFirst, FIFOScheduler):
    """Tune's FIFO scheduler (no early stopping), choosing the newest waiting trial."""
