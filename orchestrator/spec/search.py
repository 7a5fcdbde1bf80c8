"""The spec's ``search:`` section: how configurations are chosen (random, grid, zoom, tpe)."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Literal

from pydantic import Field, model_validator

from orchestrator.search.tpe import TpeSettings
from orchestrator.spec.base import StrictModel

# Defaults that depend on the strategy. The fields stay None when unset (so a spec's hash,
# and what "set by the user" means, do not change); ``caviar schema`` shows these values.
DEFAULT_SAMPLES_PER_POINT = 16  # random: trials per grid point; zoom: per round per point
DEFAULT_ZOOM_ROUNDS = 3
DEFAULT_KEEP_TOP = 0.25
DEFAULT_MARGIN = 0.1
DEFAULT_EXPLORE = 0.25  # measured: bench/search_bench.py (docs/performance.md)
DEFAULT_KEEP_FROM = "sweep"


class TpeSpec(StrictModel):
    """Optuna's Tree-structured Parzen Estimator, searching in caviar's scales."""

    n_startup_trials: Annotated[
        int,
        Field(
            ge=1,
            le=100_000,
            description=(
                "Trials sampled at random before TPE models the results (each with a shape of "
                "its own: fused packs start after them). Under ranking: bohb it is also the "
                "fewest trials that must have a value at an ASHA rung for TPE to rank trials "
                "there (at least parameters + 1)."
            ),
        ),
    ] = 10
    n_ei_candidates: Annotated[
        int,
        Field(
            ge=1,
            le=10_000,
            description=(
                "Candidates TPE draws from its model of the good trials for each proposal; it "
                "proposes the one likeliest to be good rather than bad."
            ),
        ),
    ] = 24
    multivariate: Annotated[
        bool,
        Field(
            description=(
                "Model the parameters jointly (Optuna's multivariate TPE, its default for one "
                "objective) rather than each on its own."
            )
        ),
    ] = True
    ranking: Annotated[
        Literal["asha", "bohb"],
        Field(
            description=(
                "How trials ASHA stopped at different rungs are ranked for TPE. bohb: BOHB's "
                "rule, by the objective at the deepest rung where n_startup_trials trials "
                "have a value; trials stopped below it rank after them, deeper first. asha: "
                "as caviar ranks them, deepest rung first, then the objective there (Optuna's "
                "rule for pruned trials). Diverged and failed trials always rank last."
            )
        ),
    ] = "bohb"
    wait_for_results: Annotated[
        bool,
        Field(
            description=(
                "Propose a trial only when results can inform it: after the random start, "
                "once n_startup_trials trials have a result, and then with at most one trial "
                "(or fused pack) per slot still waiting for its first result. false proposes "
                "whenever Ray Tune asks, up to a waiting trial per slot ahead, as earlier "
                "caviar did: the same sweep, decided on less (see docs/performance.md)."
            )
        ),
    ] = True
    shape_explore: Annotated[
        float,
        Field(
            ge=0.0,
            le=1.0,
            description=(
                "The share of fused packs whose shape (layers, units, batch size... the fields "
                "a pack's members share) is drawn at random, as in the random start, instead "
                "of by TPE. TPE sees one observation of a shape per pack, so its model of "
                "shapes has few points; a pack sent to a shape it misjudged costs every "
                "member. 0: every pack's shape is TPE's."
            ),
        ),
    ] = 0.0
    pack_random_start: Annotated[
        bool,
        Field(
            description=(
                "Pack the random start: its first n_startup_trials trials train in fused "
                "packs of a random shape each (as strategy random's do), each member with "
                "its own values. false trains them alone, each with a shape of its own: more "
                "shapes for TPE's model to start from, at the unpacked cost (measured worse "
                "on the benchmark: docs/performance.md, run 11). Only where the space samples "
                "a shape field and packs are on; a one-shape space always packs."
            )
        ),
    ] = True

    def settings(self) -> TpeSettings:
        return TpeSettings(
            self.n_startup_trials,
            self.n_ei_candidates,
            self.multivariate,
            self.ranking,
            self.wait_for_results,
            self.shape_explore,
            self.pack_random_start,
        )


class SearchSpec(StrictModel):
    strategy: Annotated[
        Literal["random", "grid", "zoom", "tpe"],
        Field(
            description=(
                "random: each trial samples every parameter on its scale (grid parameters are "
                "still enumerated). grid: every combination of grid and values parameters. "
                "zoom: coarse to fine: rounds of random search, each in the box around the "
                "previous round's best trials. tpe: Optuna's TPE proposes each trial from the "
                "results so far (early-stopped, diverged and running trials included), in "
                "the same scales; settings under tpe."
            )
        ),
    ] = "random"
    num_trials: Annotated[
        int | None,
        Field(
            ge=1,
            le=100_000,
            description=(
                "random, tpe: trials per grid point (default 16). grid: repeats of the whole "
                "grid (default 1). zoom: use trials_per_round."
            ),
            json_schema_extra={"default": DEFAULT_SAMPLES_PER_POINT},
        ),
    ] = None
    seed: Annotated[
        int,
        Field(description="Seed of the sampled configurations (and of every TPE proposal)."),
    ] = 0
    max_concurrent: Annotated[
        int | None,
        Field(ge=1, description="Cap on trials running at once (default: as many as fit)."),
    ] = None
    rounds: Annotated[
        int | None,
        Field(
            ge=1,
            le=100,
            description="zoom: number of rounds (default 3).",
            json_schema_extra={"default": DEFAULT_ZOOM_ROUNDS},
        ),
    ] = None
    trials_per_round: Annotated[
        int | None,
        Field(
            ge=1,
            le=100_000,
            description="zoom: trials per round per grid point (default 16).",
            json_schema_extra={"default": DEFAULT_SAMPLES_PER_POINT},
        ),
    ] = None
    keep_top: Annotated[
        float | None,
        Field(
            gt=0,
            description=(
                "zoom: the best trials that define the next region: a fraction (< 1) of the "
                "round's ranked trials, or a count (>= 1). Default 0.25."
            ),
            json_schema_extra={"default": DEFAULT_KEEP_TOP},
        ),
    ] = None
    margin: Annotated[
        float | None,
        Field(
            ge=0,
            le=1,
            description=(
                "zoom: widen the box around the kept trials by this share of the previous "
                "region's width on each side (in the scale's coordinate). Default 0.1."
            ),
            json_schema_extra={"default": DEFAULT_MARGIN},
        ),
    ] = None
    explore: Annotated[
        float | None,
        Field(
            ge=0,
            lt=1,
            description=(
                "zoom: the share of each round after the first that is sampled from the whole "
                "region instead of the zoomed one, so an optimum the box missed can still be "
                "found (and moves the box when it ranks among the best). Default 0.25."
            ),
            json_schema_extra={"default": DEFAULT_EXPLORE},
        ),
    ] = None
    keep_from: Annotated[
        Literal["sweep", "round"] | None,
        Field(
            description=(
                "zoom: rank the best trials among every round so far (sweep) or the last "
                "round only (round), before taking the keep_top of them. Default sweep."
            ),
            json_schema_extra={"default": DEFAULT_KEEP_FROM},
        ),
    ] = None
    sampler: Annotated[
        Literal["random", "tpe"] | None,
        Field(
            description=(
                "zoom: how each round after the first draws its share in the zoomed box. "
                "random: at random on each parameter's scale. tpe: Optuna's TPE, modelling "
                "every trial of the sweep so far that lies in the box (ranked at the full "
                "budget, deeper rungs first) with the search.tpe settings. The exploration "
                "share is always random over the whole region. Default random."
            ),
            json_schema_extra={"default": "random"},
        ),
    ] = None
    tpe: Annotated[
        TpeSpec | None,
        Field(
            description=(
                "tpe (and zoom with sampler: tpe): the sampler's settings (n_startup_trials, "
                "n_ei_candidates, multivariate, ranking, wait_for_results, shape_explore, "
                "pack_random_start); "
                "the seed is search.seed."
            ),
            json_schema_extra={"default": TpeSpec().model_dump()},
        ),
    ] = None

    @model_validator(mode="after")
    def _zoom_fields_only_for_zoom(self) -> SearchSpec:
        zoom_fields = {
            "rounds",
            "trials_per_round",
            "keep_top",
            "margin",
            "explore",
            "keep_from",
            "sampler",
        } & self.model_fields_set
        if self.strategy != "zoom" and zoom_fields:
            raise ValueError(
                f"{', '.join(sorted(zoom_fields))} only "
                f"{'applies' if len(zoom_fields) == 1 else 'apply'} to strategy: zoom "
                f"(this spec uses strategy: {self.strategy}); set strategy: zoom or remove "
                f"{'it' if len(zoom_fields) == 1 else 'them'}"
            )
        if self.strategy == "zoom" and self.num_trials is not None:
            raise ValueError(
                "strategy: zoom counts trials with rounds x trials_per_round; remove num_trials"
            )
        if self.keep_top is not None and self.keep_top >= 1 and self.keep_top != int(self.keep_top):
            raise ValueError(f"keep_top >= 1 is a count and must be whole, got {self.keep_top:g}")
        if self.tpe is not None and self.strategy != "tpe" and not self._zoom_tpe():
            raise ValueError(
                f"tpe settings only apply to strategy: tpe or to zoom with sampler: tpe (this "
                f"spec uses strategy: {self.strategy}); set one of them or remove tpe"
            )
        return self

    def samples_per_point(self) -> int:
        if self.strategy == "zoom":
            return self.trials_per_round or DEFAULT_SAMPLES_PER_POINT
        if self.num_trials is not None:
            return self.num_trials
        return DEFAULT_SAMPLES_PER_POINT if self.strategy in ("random", "tpe") else 1

    def rounds_count(self) -> int:
        return (self.rounds or DEFAULT_ZOOM_ROUNDS) if self.strategy == "zoom" else 1

    def keep_top_value(self) -> float:
        return self.keep_top if self.keep_top is not None else DEFAULT_KEEP_TOP

    def margin_value(self) -> float:
        return self.margin if self.margin is not None else DEFAULT_MARGIN

    def explore_value(self) -> float:
        return self.explore if self.explore is not None else DEFAULT_EXPLORE

    def keep_from_value(self) -> Literal["sweep", "round"]:
        return self.keep_from if self.keep_from is not None else DEFAULT_KEEP_FROM

    def _zoom_tpe(self) -> bool:
        return self.strategy == "zoom" and self.sampler == "tpe"

    def round_sampler_settings(self) -> TpeSettings | None:
        """zoom with sampler: tpe: the settings TPE draws each later round's box share with
        (ranked at the full budget: a round starts once every earlier trial has ended, and its
        records keep each trial's last epoch); else None."""
        if not self._zoom_tpe():
            return None
        return dataclasses.replace((self.tpe or TpeSpec()).settings(), ranking="asha")

    def tpe_settings(self) -> TpeSettings | None:
        """The TPE sampler's settings under strategy tpe (defaults where unset), else None."""
        if self.strategy != "tpe":
            return None
        return (self.tpe or TpeSpec()).settings()
