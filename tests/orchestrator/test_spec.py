"""The spec: good specs parse, bad ones list every problem by its path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import SpecError
from orchestrator.spec import json_schema, load_spec, parse_spec, parse_spec_text
from trainables import get_trainable

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))


def _minimal(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "t",
        "space": {"learning_rate": {"scale": "log", "low": 1e-3, "high": 1.0}},
    }
    spec.update(overrides)
    return spec


def _paths(data: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(SpecError) as caught:
        parse_spec(data)
    return {p.path: p.message for p in caught.value.problems}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_valid(path: Path) -> None:
    spec = load_spec(path)
    assert spec.num_trials() >= 1


def test_examples_exist() -> None:
    assert {p.name for p in EXAMPLES} >= {"digits.yaml"}
    assert len(EXAMPLES) >= 2


def test_defaults_a_newcomer_would_accept() -> None:
    spec = parse_spec(_minimal())
    assert spec.data.source == "digits"
    assert spec.scheduler.kind == "asha"
    assert spec.max_epochs == 30
    assert spec.mode == "max"
    assert spec.num_trials() == 16
    assert spec.tracking_uri({}) == "sqlite:///mlflow.db"
    assert (
        spec.tracking_uri({"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"})
        == "http://127.0.0.1:5000"
    )
    assert spec.experiment_name == "t"


def test_loss_objective_defaults_to_min() -> None:
    assert parse_spec(_minimal(objective={"metric": "val_loss"})).mode == "min"


def test_every_range_problem_is_reported_with_its_path() -> None:
    problems = _paths(
        _minimal(
            space={
                "learning_rate": {"scale": "log", "low": 0, "high": 1},
                "momentum": {"scale": "log1m", "low": 0.9, "high": 1.0},
                "hidden_units": {"scale": "linear", "low": 64, "high": 16, "integer": True},
                "layers": {"values": [1, 2, 2]},
            }
        )
    )
    assert problems["space.learning_rate.low"] == "must be > 0 on a log scale, got 0"
    assert "log1m" in problems["space.momentum.high"]
    assert "must be > low" in problems["space.hidden_units.high"]
    assert "twice" in problems["space.layers.values"]
    assert len(problems) == 4


def test_unknown_keys_are_errors_with_a_suggestion() -> None:
    problems = _paths(_minimal(search={"num_trails": 3}, colour="red"))
    assert "did you mean 'num_trials'" in problems["search.num_trails"]
    assert "unknown key" in problems["colour"]


def test_unknown_keys_list_the_valid_keys_read_from_the_models_at_every_depth() -> None:
    """The valid keys come from the models, not a second list: a union lists every member's
    fields (scheduler: asha's, fifo's and pbt's), and a nested section its own (search.tpe)."""
    problems = _paths(
        _minimal(
            scheduler={"grace_perod": 2},
            search={"strategy": "tpe", "tpe": {"n_startup": 3}},
            panda={"rules": {"platau": {}}},
        )
    )
    assert problems["scheduler.grace_perod"] == (
        "unknown key; did you mean 'grace_period'? "
        "(valid keys: kind, grace_period, reduction_factor, max_epochs, brackets, interval, "
        "quantile, perturbation)"
    )
    assert "did you mean 'n_startup_trials'?" in problems["search.tpe.n_startup"]
    assert "(valid keys: plateau, divergence, stop)" in problems["panda.rules.platau"]


def test_an_unknown_key_that_looks_like_a_union_tag_keeps_its_path() -> None:
    """Found by the fuzz test: pydantic's union tags (``__asha__``) are dropped from a path,
    a user's key of underscores is not."""
    problems = _paths(_minimal(_____=1, __asha__=2))
    assert "unknown key" in problems["_____"]
    assert "" not in problems


def test_unknown_parameter_lists_the_trainable_parameters() -> None:
    problems = _paths(_minimal(space={"learnig_rate": {"values": [0.1]}}))
    assert "learning_rate" in problems["space.learnig_rate"]
    listed = problems["space.learnig_rate"].split("its parameters are ", 1)[1]
    assert listed.split(", ") == sorted(get_trainable("bn_softmax_mlp").parameter_names())


def test_parameter_in_space_and_fixed() -> None:
    problems = _paths(_minimal(fixed={"learning_rate": 0.1}))
    assert "sampled or fixed" in problems["fixed.learning_rate"]


def test_values_are_checked_against_the_trainable() -> None:
    problems = _paths(
        _minimal(space={"optimizer": {"values": ["sgd", "adamw"]}}, fixed={"batch_size": 0})
    )
    assert set(problems) == {"fixed.batch_size"}
    problems = _paths(_minimal(space={"optimizer": {"values": ["sgd", "adamw"]}}))
    assert set(problems) == {"space.optimizer.values[1]"}


def test_integer_parameter_needs_integer_sampling() -> None:
    problems = _paths(_minimal(space={"hidden_units": {"scale": "log", "low": 16, "high": 64}}))
    assert "integer: true" in problems["space.hidden_units"]


def test_grace_period_must_fit_the_budget() -> None:
    problems = _paths(_minimal(scheduler={"kind": "asha", "grace_period": 40, "max_epochs": 30}))
    assert problems["scheduler.grace_period"] == "must be <= max_epochs (30), got 40"


def test_epochs_and_max_epochs_must_agree() -> None:
    problems = _paths(_minimal(fixed={"epochs": 10}, scheduler={"kind": "asha", "max_epochs": 20}))
    assert "set only one" in problems["scheduler.max_epochs"]
    assert parse_spec(_minimal(fixed={"epochs": 12})).max_epochs == 12


def test_unknown_trainable_lists_the_valid_ones() -> None:
    problems = _paths(_minimal(trainable="resnet"))
    assert "bn_softmax_mlp" in problems["trainable"]


def test_unknown_metric_lists_the_reported_ones() -> None:
    problems = _paths(_minimal(objective={"metric": "f1"}))
    assert "val_accuracy" in problems["objective.metric"]
    listed = problems["objective.metric"].split("choose one of ", 1)[1]
    assert set(listed.split(", ")) == set(get_trainable("bn_softmax_mlp").metrics)


def test_grid_strategy_rejects_ranges_and_counts_the_grid() -> None:
    problems = _paths(_minimal(search={"strategy": "grid"}))
    assert "cannot be enumerated" in problems["space.learning_rate"]
    spec = parse_spec(
        _minimal(
            space={"learning_rate": {"grid": [0.01, 0.1]}, "layers": {"values": [1, 2, 3]}},
            search={"strategy": "grid"},
        )
    )
    assert spec.num_trials() == 6
    assert "6 trials" in spec.summary()


def test_zoom_settings_default_to_exploring_and_are_zoom_only() -> None:
    zoom = parse_spec(_minimal(search={"strategy": "zoom", "rounds": 2, "trials_per_round": 4}))
    assert (zoom.search.explore_value(), zoom.search.keep_from_value()) == (0.25, "sweep")
    seeds = parse_spec(
        _minimal(search={"strategy": "zoom", "explore": 0, "keep_from": "round"})
    )  # the seeds' recipe exactly
    assert (seeds.search.explore_value(), seeds.search.keep_from_value()) == (0, "round")
    problems = _paths(_minimal(search={"strategy": "random", "explore": 0.5}))
    assert problems["search"].startswith("explore only applies to strategy: zoom")
    problems = _paths(_minimal(search={"strategy": "zoom", "explore": 1.0, "keep_from": "all"}))
    assert set(problems) == {"search.explore", "search.keep_from"}


def test_random_strategy_crosses_grid_points_with_samples() -> None:
    spec = parse_spec(
        _minimal(
            space={
                "layers": {"grid": [1, 2]},
                "learning_rate": {"scale": "log", "low": 1e-3, "high": 1},
            },
            search={"num_trials": 5},
        )
    )
    assert spec.num_trials() == 10


def test_credentials_in_the_tracking_uri_are_refused() -> None:
    problems = _paths(_minimal(tracking={"uri": "http://alice:secret@127.0.0.1:5000"}))
    assert "MLFLOW_TRACKING_PASSWORD" in problems["tracking.uri"]
    assert "secret" not in problems["tracking.uri"]


def test_data_sources_and_fractions() -> None:
    problems = _paths(_minimal(data={"source": "mnist"}))
    assert "synthetic" in problems["data.source"]
    problems = _paths(_minimal(data={"source": "synthetic", "n_samples": 5}))
    assert "data.n_samples" in problems
    problems = _paths(_minimal(data={"val_fraction": 0.5, "test_fraction": 0.45}))
    assert "data" in problems


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "is empty"),
        ("name: [unclosed", "invalid YAML: line 1"),
        ("- a\n- b\n", "must be a mapping"),
        ("name: x\nspace: {lr: !!python/object/apply:os.system [echo hi]}\n", "invalid YAML"),
    ],
)
def test_unparseable_text(text: str, fragment: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec_text(text, "spec.yaml")
    assert fragment in str(caught.value)


def test_missing_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml")
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(SpecError, match="not a text file"):
        load_spec(binary)


def test_schema_is_generated_from_the_models_with_descriptions() -> None:
    schema = json_schema()
    assert schema["additionalProperties"] is False
    assert {"name", "space", "data", "search", "scheduler"} <= set(schema["properties"])
    range_model = schema["$defs"]["RangeParameter"]
    assert set(range_model["properties"]["scale"]["enum"]) == {"linear", "log", "log1m"}
    assert "description" in range_model["properties"]["scale"]


def test_spec_hash_depends_on_content() -> None:
    a = parse_spec(_minimal())
    assert a.spec_hash() == parse_spec(_minimal()).spec_hash()
    assert a.spec_hash() != parse_spec(_minimal(name="u")).spec_hash()
