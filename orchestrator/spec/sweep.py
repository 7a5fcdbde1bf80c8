"""The sweep spec: its sections together, and the values that depend on more than one of them.

Every section is its own model (``parameters``, ``data_sources``, ``search``, ``scheduler``,
``objective``, ``resources``, ``tracking``, ``storage``, ``panda``); the checks that span
sections are here too (they run inside its validation, so ``caviar validate`` lists them with
pydantic's own problems); turning a file or a mapping into a ``SweepSpec`` is ``parse``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationError, ValidationInfo, model_validator

from orchestrator.errors import Problem, SpecError
from orchestrator.search.space import ChoiceDomain, Domain, GridDomain, SearchSpace
from orchestrator.spec.base import StrictModel
from orchestrator.spec.data_sources import BundledData, DataSpec
from orchestrator.spec.objective import ObjectiveSpec
from orchestrator.spec.panda import PandaSpec
from orchestrator.spec.parameters import Parameter, RangeParameter
from orchestrator.spec.problems import pydantic_message
from orchestrator.spec.resources import ResourcesSpec
from orchestrator.spec.scheduler import AshaScheduler, PbtScheduler, SchedulerSpec
from orchestrator.spec.search import SearchSpec
from orchestrator.spec.storage import StorageSpec
from orchestrator.spec.tracking import TrackingSpec
from orchestrator.store.uri import tracking_uri as store_uri

# Fields a resumed sweep may change: they decide how the sweep is run and recorded (its note,
# its timeouts, how often it reports and checkpoints), never what it trains.
RESULT_NEUTRAL = (
    "description",
    "resources.epoch_timeout_s",
    "storage.report_every_s",
    "storage.checkpoint_every_s",
    "storage.max_failures",
)


class SweepSpec(StrictModel):
    """A caviar sweep: what to train, which parameters to vary, how to search and stop."""

    name: Annotated[
        str,
        Field(
            min_length=1,
            max_length=100,
            pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
            description="Sweep name: letters, digits, '.', '_' and '-'; the default experiment.",
        ),
    ]
    description: Annotated[str, Field(description="Free text, logged on the parent run.")] = ""
    data: Annotated[DataSpec, Field(description="The dataset and its splits.")] = Field(
        default_factory=BundledData
    )
    trainable: Annotated[
        str,
        Field(
            description=(
                "The trainable to tune: a registered name (default bn_softmax_mlp), an import "
                "path package.module:NAME (the spec's folder first, then sys.path), or a "
                "caviar.trainables entry point."
            )
        ),
    ] = "bn_softmax_mlp"
    space: Annotated[
        dict[str, Parameter],
        Field(min_length=1, description="The parameters to vary, by name."),
    ]
    fixed: Annotated[
        dict[str, Any], Field(description="Constant parameters every trial receives.")
    ] = Field(default_factory=dict)
    search: Annotated[SearchSpec, Field(description="How configurations are chosen.")] = Field(
        default_factory=SearchSpec
    )
    scheduler: Annotated[
        SchedulerSpec, Field(description="Early stopping: asha (default) or fifo.")
    ] = Field(default_factory=AshaScheduler)
    objective: Annotated[ObjectiveSpec, Field(description="What 'best' means.")] = Field(
        default_factory=ObjectiveSpec
    )
    resources: Annotated[ResourcesSpec, Field(description="What each trial gets.")] = Field(
        default_factory=ResourcesSpec
    )
    tracking: Annotated[TrackingSpec, Field(description="Where results are logged.")] = Field(
        default_factory=TrackingSpec
    )
    storage: Annotated[StorageSpec, Field(description="Where Ray keeps results.")] = Field(
        default_factory=StorageSpec
    )
    panda: Annotated[
        PandaSpec, Field(description="caviar panda: babysitting rules and kept checkpoints.")
    ] = Field(default_factory=PandaSpec)

    @model_validator(mode="after")
    def _sections_agree(self, info: ValidationInfo) -> SweepSpec:
        # Not a ValueError on purpose: SpecError passes through pydantic with its paths intact.
        spec_dir = (info.context or {}).get("spec_dir")
        problems = list(cross_section_problems(self, spec_dir))
        if problems:
            raise SpecError(problems)
        return self

    # Resolved values: the defaults that depend on other sections, in one place.

    @property
    def max_epochs(self) -> int:
        if self.scheduler.max_epochs is not None:
            return self.scheduler.max_epochs
        epochs = self.fixed.get("epochs")
        return int(epochs) if epochs is not None else 30

    @property
    def mode(self) -> Literal["max", "min"]:
        if self.objective.mode is not None:
            return self.objective.mode
        return _natural_mode(self.trainable, self.objective.metric)

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or self.name

    def tracking_uri(self, environ: Mapping[str, str] = os.environ) -> str:
        return store_uri(self.tracking.uri, environ)

    def storage_path(self, environ: Mapping[str, str] = os.environ) -> str:
        """``storage.path`` if the spec sets it, else ``$CAVIAR_STORAGE_PATH``, else the default.

        On a multi-node cluster every node writes checkpoints the driver reads back, so they
        must land on a volume all nodes share; the cluster names it in ``CAVIAR_STORAGE_PATH``.
        """
        if "path" in self.storage.model_fields_set:
            return self.storage.path
        return environ.get("CAVIAR_STORAGE_PATH") or self.storage.path

    def search_space(self) -> SearchSpace:
        """The domains to sample; under ``strategy: grid`` categorical values are enumerated."""
        domains: list[Domain] = []
        for name, parameter in self.space.items():
            domain = parameter.to_domain(name)
            if self.search.strategy == "grid" and isinstance(domain, ChoiceDomain):
                domain = GridDomain(name, domain.values)
            domains.append(domain)
        return SearchSpace(tuple(domains), {**self.fixed, "epochs": self.max_epochs})

    def num_trials(self) -> int:
        per_round = self.search_space().grid_size() * self.search.samples_per_point()
        return per_round * self.search.rounds_count()

    def results_fields(self) -> dict[str, Any]:
        """The spec in canonical form, less the fields that cannot change its results
        (``RESULT_NEUTRAL``): what a resumed sweep must share with the one it finishes.

        Fields at their defaults are left out, so a caviar that adds a field (with a default
        that keeps today's behaviour) still resumes the sweeps an older one started."""
        fields = self.model_dump(mode="json", exclude_defaults=True)
        for path in RESULT_NEUTRAL:
            section, _, key = path.rpartition(".")
            holder = fields.get(section) if section else fields
            if isinstance(holder, dict):
                holder.pop(key, None)
                if section and not holder:  # a section that only set neutral fields
                    fields.pop(section)
        return fields

    def spec_hash(self) -> str:
        canonical = json.dumps(self.results_fields(), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def summary(self) -> str:
        space = self.search_space()
        params = ", ".join(f"{d.name} {d.describe()}" for d in space.domains)
        grid = space.grid_size()
        per_point = self.search.samples_per_point()
        rounds = self.search.rounds_count()
        factors = ([f"{rounds} rounds"] if self.search.strategy == "zoom" else []) + (
            [f"{grid} grid points"] if grid > 1 else []
        )
        trials = (
            f"{' x '.join([*factors, str(per_point)])} = {self.num_trials()} trials"
            if factors
            else f"{self.num_trials()} trials"
        )
        sched = self.scheduler
        if isinstance(sched, AshaScheduler):
            stopping = (
                f"asha (grace {sched.grace_period}, reduction {sched.reduction_factor:g}, "
                f"max {self.max_epochs} epochs)"
            )
        elif isinstance(sched, PbtScheduler):
            stopping = (
                f"pbt (every {sched.interval} epochs the bottom {sched.quantile:g} copies the "
                f"top; {self.max_epochs} epochs)"
            )
        else:
            stopping = f"fifo ({self.max_epochs} epochs)"
        return (
            f"{self.name}: {len(space.domains)} parameters ({params}); "
            f"{self.search.strategy} search, {trials}; {stopping}; "
            f"objective {self.mode} {self.objective.metric}"
        )


def _natural_mode(trainable: str, metric: str) -> Literal["max", "min"]:
    from trainables import get_trainable

    mode = get_trainable(trainable).metrics.get(metric, "max")
    return "min" if mode == "min" else "max"


# --- the checks that span sections, and those against the trainable the spec names -------


def cross_section_problems(spec: SweepSpec, spec_dir: Path | None = None) -> Iterable[Problem]:
    """Checks that need more than one section; each problem carries the path to fix.

    A trainable named by import path is imported here, the spec's folder first."""
    from trainables import UnknownTrainableError, get_trainable

    try:
        definition = get_trainable(spec.trainable, [spec_dir] if spec_dir else [])
    except UnknownTrainableError as error:
        yield Problem("trainable", str(error.args[0]) if error.args else str(error))
        return

    known = set(definition.parameter_names())
    for section, names in (("space", spec.space), ("fixed", spec.fixed)):
        for name in names:
            if name not in known:
                yield Problem(
                    f"{section}.{name}",
                    f"{spec.trainable} has no parameter {name!r}; "
                    f"its parameters are {', '.join(sorted(known))}",
                )
    for name in spec.space:
        if name in spec.fixed:
            yield Problem(
                f"fixed.{name}", "is also in space; a parameter is sampled or fixed, not both"
            )

    if "epochs" in spec.space:
        yield Problem(
            "space.epochs",
            "the epoch budget is the scheduler's to spend; set scheduler.max_epochs instead",
        )
    fixed_epochs = spec.fixed.get("epochs")
    if (
        spec.scheduler.max_epochs is not None
        and fixed_epochs is not None
        and fixed_epochs != spec.scheduler.max_epochs
    ):
        yield Problem(
            "scheduler.max_epochs",
            f"is {spec.scheduler.max_epochs} but fixed.epochs is {fixed_epochs}; set only one",
        )
    if isinstance(spec.scheduler, AshaScheduler) and spec.scheduler.grace_period > spec.max_epochs:
        yield Problem(
            "scheduler.grace_period",
            f"must be <= max_epochs ({spec.max_epochs}), got {spec.scheduler.grace_period}",
        )

    if isinstance(spec.scheduler, PbtScheduler):
        yield from _pbt_problems(spec, definition)

    if spec.objective.metric not in definition.metrics:
        yield Problem(
            "objective.metric",
            f"{spec.trainable} does not report {spec.objective.metric!r}; "
            f"choose one of {', '.join(definition.metrics)}",
        )

    pack_size = spec.resources.pack_size
    if isinstance(pack_size, int) and pack_size > 1 and definition.packing is None:
        yield Problem(
            "resources.pack_size",
            f"{spec.trainable} cannot be packed (it defines no fused training); "
            "use pack_size: 1 or auto",
        )

    if spec.search.strategy == "grid":
        for name, parameter in spec.space.items():
            if isinstance(parameter, RangeParameter):
                yield Problem(
                    f"space.{name}",
                    "a range cannot be enumerated by strategy: grid; "
                    "use grid: [...] or values: [...], or strategy: random",
                )

    yield from _trainable_config_problems(spec, definition.config_model, known)


def _pbt_problems(spec: SweepSpec, definition: Any) -> Iterable[Problem]:
    """What population-based training needs of the rest of the spec."""
    from orchestrator.search.pbt import perturbable
    from trainables.adjustable import adjustable_of

    scheduler = spec.scheduler
    assert isinstance(scheduler, PbtScheduler)
    if scheduler.interval >= spec.max_epochs:
        yield Problem(
            "scheduler.interval",
            f"must be < max_epochs ({spec.max_epochs}), got {scheduler.interval}: "
            "no trial would ever copy another",
        )
    if spec.search.strategy != "random":
        yield Problem(
            "search.strategy",
            f"pbt draws its population at random and then evolves it; use strategy: random "
            f"(got {spec.search.strategy})",
        )
        return
    population = spec.num_trials()
    if population < 2:
        yield Problem("search.num_trials", "pbt needs a population of at least 2 trials")
    limit = spec.search.max_concurrent
    if limit is not None and limit < population:
        yield Problem(
            "search.max_concurrent",
            f"is {limit}, but pbt keeps its whole population of {population} trials in "
            "flight (they wait for each other at every interval); remove max_concurrent",
        )
    adjustable = adjustable_of(definition)
    shape = definition.packing.shape_fields if definition.packing is not None else ()
    shaped = sorted({d.name for d in spec.search_space().sampled} & set(shape))
    if isinstance(spec.resources.pack_size, int) and spec.resources.pack_size > 1 and shaped:
        yield Problem(
            "resources.pack_size",
            f"a pbt population packs only when every trial has one shape, but space samples "
            f"{', '.join(shaped)} (a copy takes its donor's shape, which a pack cannot); fix "
            "them in fixed, or use pack_size: 1 (auto leaves such a population unpacked)",
        )
    moved = perturbable(spec.search_space().sampled, adjustable, shape)
    if not moved:
        allowed = ", ".join(sorted(adjustable - {*shape, "epochs", "seed"})) or "none"
        yield Problem(
            "space",
            f"pbt explores by changing values mid-training, but no parameter of space can "
            f"change between epochs (those {spec.trainable} can: {allowed}); add one of them "
            "to space",
        )


def _trainable_config_problems(
    spec: SweepSpec, config_model: type[BaseModel], known: set[str]
) -> Iterable[Problem]:
    """Validate fixed values and every range end / listed value against the trainable's config."""
    fixed = {k: v for k, v in spec.fixed.items() if k in known}
    base = {**fixed, "epochs": spec.max_epochs}
    base_errors = _config_errors(config_model, base)
    for loc, message in base_errors:
        yield Problem(f"fixed.{loc}" if loc else "fixed", message)
    if base_errors:
        return
    for name, parameter in spec.space.items():
        if name not in known or name in spec.fixed:
            continue
        field = config_model.model_fields.get(name)
        if isinstance(parameter, RangeParameter) and field is not None:
            if field.annotation is int and not parameter.integer:
                yield Problem(f"space.{name}", f"{name} is a whole number; add integer: true")
                continue
        for where, value in parameter.corner_values():
            for _, message in _config_errors(config_model, {**base, name: value}):
                yield Problem(f"space.{name}.{where}", message)


def _config_errors(config_model: type[BaseModel], config: dict[str, Any]) -> list[tuple[str, str]]:
    try:
        config_model.model_validate(config)
    except ValidationError as error:
        return [(".".join(str(p) for p in e["loc"]), pydantic_message(e)) for e in error.errors()]
    return []
