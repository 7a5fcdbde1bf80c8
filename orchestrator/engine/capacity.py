"""Whether one trial fits anywhere: a trial asking for more than any node offers waits forever.

Ray keeps such a trial pending without a word (a cluster that autoscales may yet add a node
that fits). caviar says so at once: on its own embedded Ray (this machine, which cannot grow)
it refuses before anything starts; on a cluster it names the missing resource and the way
out while it waits.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from orchestrator.errors import Problem, SpecError


def shortfall(
    nodes: Sequence[Mapping[str, float]], cpus_per_trial: float, gpus_per_trial: float
) -> list[Problem]:
    """What no single node offers, as spec problems (empty when some node fits a trial).

    A trial runs on one node, so the question is per node, not about the cluster's total.
    """
    asked = {"CPU": ("resources.cpus_per_trial", cpus_per_trial)}
    if gpus_per_trial > 0:
        asked["GPU"] = ("resources.gpus_per_trial", gpus_per_trial)
    if any(
        all(node.get(k, 0.0) + 1e-9 >= need for k, (_, need) in asked.items()) for node in nodes
    ):
        return []
    problems = []
    for resource, (path, need) in asked.items():
        best = max((node.get(resource, 0.0) for node in nodes), default=0.0)
        if best + 1e-9 < need:
            problems.append(
                Problem(
                    path,
                    f"asks for {need:g} {resource} per trial; the most any node offers is {best:g}",
                )
            )
    if not problems:  # each fits somewhere, but never together on one node
        offers = "; ".join(
            f"node {n}: {node.get('CPU', 0):g} CPU, {node.get('GPU', 0):g} GPU"
            for n, node in enumerate(nodes, 1)
        )
        problems.append(Problem("resources", f"no single node offers both ({offers})"))
    return problems


def this_machine(gpus_wanted: bool) -> dict[str, float]:
    """What an embedded Ray on this machine will offer: its usable cores and, only when the
    spec asks for GPUs (it costs importing torch), the GPUs torch can use."""
    try:
        cpus = float(len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        cpus = float(os.cpu_count() or 1)
    offer = {"CPU": cpus}
    if gpus_wanted:
        import torch

        offer["GPU"] = float(torch.cuda.device_count() if torch.cuda.is_available() else 0)
    return offer


def refuse_on_this_machine(cpus_per_trial: float, gpus_per_trial: float) -> None:
    """Before an embedded sweep starts: a trial that cannot fit here is a spec error."""
    problems = shortfall([this_machine(gpus_per_trial > 0)], cpus_per_trial, gpus_per_trial)
    if problems:
        fix = (
            "set resources.gpus_per_trial: 0 to train on the CPU, or run the sweep where GPUs "
            "are (caviar submit SPEC --address ...; a CUDA build of torch is needed)"
            if any(p.path.endswith("gpus_per_trial") for p in problems)
            else "lower resources.cpus_per_trial to at most this machine's cores"
        )
        problems.append(Problem("", f"this machine cannot run one trial: {fix}"))
        raise SpecError(problems)


def waiting_note(
    nodes: Sequence[Mapping[str, float]], cpus_per_trial: float, gpus_per_trial: float
) -> str | None:
    """On a cluster: what to tell the user when no node fits a trial (None when one does)."""
    problems = shortfall(nodes, cpus_per_trial, gpus_per_trial)
    if not problems:
        return None
    what = "; ".join(str(p) for p in problems)
    return (
        f"caviar: warning: no node of this cluster ({len(nodes)} alive) can run a trial: "
        f"{what}.\ncaviar:   Trials wait until such a node joins: an autoscaling cluster may "
        "add one; a fixed cluster never will, so stop with Ctrl-C (then --resume later) and "
        "lower the spec's resources."
    )
