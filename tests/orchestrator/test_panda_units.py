"""Panda's pure parts: the rules, the lineage, the starting config and the change checks."""

from __future__ import annotations

import math

import pytest

from orchestrator.panda.changes import PandaError, check_changes, parse_assignments
from orchestrator.panda.lineage import Lineage, Segment
from orchestrator.panda.rules import decide, epochs_since_best
from orchestrator.panda.start import initial_config, middle
from orchestrator.spec import ChoiceParameter, RangeParameter, parse_spec
from orchestrator.spec.panda import PandaRules
from orchestrator.trials import Trial
from trainables.config import MlpConfig


def _epochs(values: list[float], diverged_last: bool = False) -> list[dict]:
    out = [{"epoch": i + 1, "val_accuracy": v, "diverged": False} for i, v in enumerate(values)]
    if diverged_last:
        out[-1] = {**out[-1], "val_accuracy": 0.0, "diverged": True}
    return out


def test_epochs_since_best_counts_from_the_best_and_respects_min_delta() -> None:
    assert epochs_since_best(_epochs([0.5, 0.7, 0.6, 0.65]), "val_accuracy", "max") == 2
    assert epochs_since_best(_epochs([0.5, 0.7, 0.6, 0.8]), "val_accuracy", "max") == 0
    assert epochs_since_best(_epochs([0.5, 0.51]), "val_accuracy", "max", 0.05) == 1
    assert epochs_since_best(_epochs([3.0, 2.0, 2.5]), "val_accuracy", "min") == 1


def test_rules_fire_in_order_divergence_stop_plateau() -> None:
    rules = PandaRules.model_validate(
        {"plateau": {"patience": 2, "factor": 0.5}, "stop": {"patience": 4}, "divergence": {}}
    )
    config = {"learning_rate": 0.1}
    flat = _epochs([0.9, 0.8, 0.8])
    plateau = decide(rules, flat, "val_accuracy", "max", config, 0, 0)
    assert plateau is not None and plateau.kind == "adjust" and plateau.by == "rule:plateau"
    assert math.isclose(plateau.changes["learning_rate"], 0.05)
    # a change two epochs ago: the lowered rate gets `patience` epochs first
    assert decide(rules, flat, "val_accuracy", "max", config, 2, 0) is None
    stop = decide(rules, _epochs([0.9, 0.8, 0.8, 0.8, 0.8]), "val_accuracy", "max", config, 4, 0)
    assert stop is not None and stop.kind == "stop"
    blown = decide(rules, _epochs([0.9, 0.8, 0.8], True), "val_accuracy", "max", config, 0, 0)
    assert blown is not None and (blown.kind, blown.rewind_to) == ("rewind", 2)
    assert math.isclose(blown.changes["learning_rate"], 0.01)
    # the rule's rewinds are bounded
    assert decide(rules, _epochs([0.9, 0.1], True), "val_accuracy", "max", config, 0, 3) is None
    assert decide(PandaRules(), flat, "val_accuracy", "max", config, 0, 0) is None


def _segment(index: int, parent: int | None, start: int, epochs: range) -> Segment:
    trial = Trial(index, {}, history=[{"epoch": e} for e in epochs])
    return Segment(trial, parent, start, "x", "user")


def test_the_branch_follows_rewinds_and_each_epoch_has_one_owner() -> None:
    lineage = Lineage()
    lineage.add(_segment(0, None, 0, range(1, 4)))  # epochs 1-3
    lineage.add(_segment(1, 0, 3, range(4, 7)))  # 4-6
    lineage.add(_segment(2, 1, 5, range(6, 8)))  # rewound to 5: 6-7
    assert [int(e["epoch"]) for e in lineage.branch()] == [1, 2, 3, 4, 5, 6, 7]
    assert [lineage.owner(e).index for e in (0, 3, 4, 5, 6, 7)] == [0, 0, 1, 1, 2, 2]
    assert lineage.checkpoint_keys()[-3:] == [(1, 5), (2, 6), (2, 7)]
    with pytest.raises(ValueError, match="ahead"):
        lineage.owner(8)


def test_the_middle_of_a_range_is_on_its_scale() -> None:
    assert math.isclose(middle(RangeParameter(scale="log", low=1e-4, high=1.0)), 1e-2)
    assert math.isclose(middle(RangeParameter(scale="log1m", low=0.9, high=0.999)), 0.99)
    assert middle(RangeParameter(scale="linear", low=1, high=4, integer=True)) == 2
    assert middle(ChoiceParameter(values=[32, 64, 128, 256])) == 64


def test_initial_config_takes_fixed_then_set_then_epochs() -> None:
    spec = parse_spec(
        {
            "name": "x",
            "space": {"learning_rate": {"scale": "log", "low": 1e-4, "high": 1}},
            "fixed": {"batch_size": 32, "epochs": 5},
        }
    )
    config = initial_config(spec, {"batch_size": 8}, epochs=9)
    assert config == {"learning_rate": pytest.approx(1e-2), "batch_size": 8, "epochs": 9}
    with pytest.raises(PandaError, match="no parameter 'lerning_rate'; did you mean"):
        initial_config(spec, {"lerning_rate": 1})


def test_changes_are_parsed_typed_and_checked() -> None:
    assert parse_assignments(["lr=1e-3", "batch_size=64", "nesterov=true"]) == {
        "learning_rate": 1e-3,
        "batch_size": 64,
        "nesterov": True,
    }
    with pytest.raises(PandaError, match="expected NAME=VALUE"):
        parse_assignments(["lr"])
    base = MlpConfig().model_dump()
    assert check_changes("bn_softmax_mlp", MlpConfig, base, {"momentum": 0.5})["momentum"] == 0.5
    with pytest.raises(PandaError, match="hidden_units mid-training: it changes the network's"):
        check_changes("bn_softmax_mlp", MlpConfig, base, {"hidden_units": 3})
    with pytest.raises(PandaError, match="batch_size=1: .*BatchNorm"):
        check_changes("bn_softmax_mlp", MlpConfig, base, {"batch_size": 1})


def test_lines_typed_in_the_session_terminal_are_commands() -> None:
    from orchestrator.panda.keys import parse_line

    adjust = parse_line("lr=0.01 momentum=0.8\n")
    assert adjust is not None and adjust.kind == "adjust" and adjust.rewind_to is None
    assert adjust.changes == {"learning_rate": 0.01, "momentum": 0.8}
    rewind = parse_line("rewind 12 batch_size=32")
    assert rewind is not None and (rewind.rewind_to, rewind.changes) == (12, {"batch_size": 32})
    stop = parse_line("stop")
    assert stop is not None and stop.kind == "stop"
    assert parse_line("   ") is None
    with pytest.raises(PandaError, match="rewind needs an epoch"):
        parse_line("rewind soon")
