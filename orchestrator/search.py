"""The Ray Tune searcher built from a spec.

caviar decides every trial's configuration itself (see ``space.py`` for why) and hands Ray the
finished dicts through a minimal ``Searcher``. The searcher also remembers which trial got which
position in the plan, so results, MLflow runs and reports can refer to trials by a stable index.
"""

from __future__ import annotations

import pickle
from typing import Any

from ray.tune.search import ConcurrencyLimiter, Searcher

from orchestrator.space import sample_configs
from orchestrator.spec import SweepSpec


class PlannedSearcher(Searcher):
    """Serves a precomputed list of configurations in order, then reports FINISHED."""

    def __init__(self, configs: list[dict[str, Any]], metric: str, mode: str) -> None:
        super().__init__(metric=metric, mode=mode)
        self._configs = configs
        self._next = 0
        self.index_of: dict[str, int] = {}

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self._next >= len(self._configs):
            return Searcher.FINISHED
        self.index_of[trial_id] = self._next
        config = dict(self._configs[self._next])
        self._next += 1
        return config

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        """Nothing to learn: a planned search does not adapt to results."""

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as file:
            pickle.dump(self.get_state(), file)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as file:
            self.set_state(pickle.load(file))

    def get_state(self) -> dict[str, Any]:
        return {"next": self._next, "index_of": dict(self.index_of)}

    def set_state(self, state: dict[str, Any]) -> None:
        self._next = state["next"]
        self.index_of = dict(state["index_of"])


def plan_configs(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every trial's configuration, deterministic in ``search.seed``."""
    return sample_configs(spec.search_space(), spec.search.samples_per_point(), spec.search.seed)


def build_searcher(spec: SweepSpec, slots: int) -> tuple[Searcher, PlannedSearcher]:
    """The searcher to give Ray, and the planned searcher inside it (for trial indices).

    Always behind a ``ConcurrencyLimiter``: for any searcher but its own, Tune keeps a single
    trial pending unless a limiter says how many may run, which on a 2-core machine meant one
    trial at a time. ``slots`` is how many trials the cluster fits at once.
    """
    planned = PlannedSearcher(plan_configs(spec), spec.objective.metric, spec.mode)
    limit = spec.search.max_concurrent or slots
    return ConcurrencyLimiter(planned, max_concurrent=max(1, limit)), planned


def concurrent_slots(
    cluster: dict[str, float], cpus_per_trial: float, gpus_per_trial: float
) -> int:
    """How many trials of this size the cluster's resources hold at once."""
    fits = [cluster.get("CPU", 1.0) / cpus_per_trial]
    if gpus_per_trial > 0:
        fits.append(cluster.get("GPU", 0.0) / gpus_per_trial)
    return max(1, int(min(fits) + 1e-9))
