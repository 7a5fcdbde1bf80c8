"""Whether one trial fits on some node: per node, per resource, with the fix named."""

from __future__ import annotations

import pytest

from orchestrator.engine.capacity import refuse_on_this_machine, shortfall, waiting_note
from orchestrator.errors import SpecError


def test_a_trial_fits_when_one_node_offers_everything_it_asks_for() -> None:
    nodes = [{"CPU": 2.0}, {"CPU": 4.0, "GPU": 1.0}]
    assert shortfall(nodes, 1, 0) == []
    assert shortfall(nodes, 4, 0.25) == []
    assert waiting_note(nodes, 2, 1) is None


def test_the_missing_resource_is_named_with_the_most_any_node_offers() -> None:
    (problem,) = shortfall([{"CPU": 2.0}, {"CPU": 1.0}], 1, 0.25)
    assert problem.path == "resources.gpus_per_trial"
    assert "asks for 0.25 GPU per trial; the most any node offers is 0" in problem.message
    (problem,) = shortfall([{"CPU": 2.0}], 3, 0)
    assert problem.path == "resources.cpus_per_trial" and "offers is 2" in problem.message


def test_resources_spread_over_two_nodes_do_not_make_one_trial_fit() -> None:
    (problem,) = shortfall([{"CPU": 8.0}, {"CPU": 1.0, "GPU": 1.0}], 2, 1)
    assert problem.path == "resources" and "no single node offers both" in problem.message


def test_on_a_cluster_the_note_says_why_trials_wait_and_what_to_do() -> None:
    note = waiting_note([{"CPU": 1.0}, {"CPU": 1.0}], 1, 0.5)
    assert note is not None
    assert "no node of this cluster (2 alive) can run a trial" in note
    assert "autoscaling" in note and "Ctrl-C" in note and "--resume" in note


def test_this_machine_refuses_more_cores_than_it_has() -> None:
    with pytest.raises(SpecError) as refused:
        refuse_on_this_machine(10_000, 0)
    assert refused.value.exit_code == 2
    assert "resources.cpus_per_trial: asks for 10000 CPU" in str(refused.value)
    refuse_on_this_machine(1, 0)  # one core always fits
