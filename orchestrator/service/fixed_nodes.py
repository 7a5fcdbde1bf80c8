"""A trial no node of the service can hold is refused, as a local ``caviar run`` refuses it.

Without the service, ``gpus_per_trial: 0.25`` on a machine without a GPU is a spec error in a
second (``engine/capacity.refuse_on_this_machine``: the embedded Ray cannot grow). On the
service the sweep ran on a cluster (``RAY_ADDRESS`` set), so it only warned that no node fits
"until such a node joins" and then waited with every trial pending until killed. But nothing
ever joins ``caviar up``'s cluster: its nodes are the ones ``caviar up`` started, no
autoscaler runs. So the driver asks the head which nodes are alive and what each offers, and
refuses before the sweep starts, naming what is missing and the way out.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from orchestrator.engine.capacity import shortfall
from orchestrator.errors import Problem, SpecError

DASHBOARD_ENV = "CAVIAR_RAY_DASHBOARD"  # the head's dashboard, set by caviar up for the driver
RESOURCES = ("CPU", "GPU")


def refuse_what_never_fits(
    cpus_per_trial: float, gpus_per_trial: float, workers: int | None = None
) -> None:
    """Raise :class:`SpecError` when no alive node of this service fits one trial; say
    nothing when the head does not answer (Ray's own wait and warning then apply)."""
    from orchestrator.cluster.services import alive_ray_nodes

    dashboard = os.environ.get(DASHBOARD_ENV)
    if not dashboard:
        return
    nodes = alive_ray_nodes(dashboard, os.environ.get("RAY_AUTH_TOKEN"))
    if not nodes:
        return
    problem = refusal(nodes, cpus_per_trial, gpus_per_trial, workers)
    if problem is not None:
        raise problem


def refusal(
    nodes: Sequence[Mapping[str, Any]],
    cpus_per_trial: float,
    gpus_per_trial: float,
    workers: int | None = None,
) -> SpecError | None:
    """The error for ``nodes`` (the head's state API rows of the alive nodes), or None when
    one of them fits a trial. ``workers``: how many worker nodes ``caviar up`` started."""
    offers = [_offer(node) for node in nodes]
    problems = shortfall(offers, cpus_per_trial, gpus_per_trial)
    if not problems:
        return None
    if any(p.path.endswith("gpus_per_trial") for p in problems):
        fix = (
            "set resources.gpus_per_trial: 0 to train on the CPU, or run the sweep where GPUs "
            "are (caviar submit SPEC --address ...; a CUDA build of torch is needed)"
        )
    else:
        most = max((o.get("CPU", 0.0) for o in offers), default=0.0)
        fix = (
            f"lower resources.cpus_per_trial to at most {most:g}, or caviar down, then "
            "caviar up --cpus-per-worker N (caviar run --no-service runs on a Ray of its own)"
        )
    alive_workers = sum(1 for node in nodes if not node.get("is_head_node"))
    if workers is not None and alive_workers < workers:
        fix += (
            f"; only {alive_workers} of its {workers} worker node(s) are up: caviar ps says "
            "why, caviar up restarts them"
        )
    problems.append(
        Problem(
            "",
            "the service cannot run one trial (its nodes are fixed: no node joins them, so "
            f"the trials would wait forever): {fix}",
        )
    )
    return SpecError(problems)


def _offer(node: Mapping[str, Any]) -> dict[str, float]:
    total = node.get("resources_total") or {}
    offer = {}
    for name in RESOURCES:
        try:
            offer[name] = float(total.get(name, 0.0))
        except (TypeError, ValueError):
            offer[name] = 0.0
    return offer
