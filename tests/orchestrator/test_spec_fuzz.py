"""Property-based: malformed specs always end in exit 2 and a short message naming the path.

Each example is a valid spec broken in one way (a wrong type, a missing or unknown key,
reversed or out-of-scale bounds, a huge number), or text that is not a spec at all. The CLI
runs in-process, so any exception other than caviar's own error would fail the test with its
traceback.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.cli import main

BASE: dict[str, Any] = {
    "name": "fuzz",
    "data": {"source": "iris", "val_fraction": 0.2, "test_fraction": 0.2, "seed": 0},
    "space": {
        "learning_rate": {"scale": "log", "low": 0.001, "high": 1.0},
        "momentum": {"scale": "log1m", "low": 0.9, "high": 0.999},
        "hidden_units": {"scale": "log", "low": 8, "high": 64, "integer": True},
        "batch_size": {"values": [16, 32]},
    },
    "fixed": {"optimizer": "sgd"},
    "search": {"strategy": "random", "num_trials": 4, "seed": 0},
    "scheduler": {"kind": "asha", "grace_period": 1, "reduction_factor": 3, "max_epochs": 5},
    "objective": {"metric": "val_accuracy", "mode": "max"},
    "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0},
}

# For each leaf of BASE, values that are wrong for it (type, range, or meaning).
HUGE = 10**40
INVALID: dict[tuple[str, ...], list[Any]] = {
    ("name",): [None, "", "has space", 123, [], "x" * 200],
    ("data", "source"): ["mnistt", None, 5, []],
    ("data", "val_fraction"): [0, 1, -1, "x", None, float("inf"), 0.95],
    ("data", "seed"): ["x", None, 1.5, []],
    ("space", "learning_rate", "low"): [0, -1, "x", None, float("inf"), 5.0],
    ("space", "learning_rate", "high"): [0, -1, "x", None, float("nan"), 1e-5],
    ("space", "learning_rate", "scale"): ["ln", 3, None],
    ("space", "momentum", "high"): [1.0, 1.5, 0, "x", 0.5],
    ("space", "hidden_units", "integer"): ["maybe", 3, None],
    ("space", "hidden_units", "high"): [8.5, -3, "x"],
    ("space", "batch_size", "values"): [[], None, "x", [0], [16, 16]],
    ("search", "num_trials"): [0, -1, HUGE, "x", 1.5],
    ("search", "strategy"): ["bayes", None, 3],
    ("scheduler", "grace_period"): [0, -1, HUGE, "x"],
    ("scheduler", "reduction_factor"): [1, 0.5, "x", None],
    ("scheduler", "kind"): ["hyperband", 3],
    ("objective", "metric"): ["f1", None, 3],
    ("objective", "mode"): ["maximize", 3],
    ("resources", "cpus_per_trial"): [0, -1, "x", 1e9],
    ("resources", "gpus_per_trial"): [-1, 1.5, "x"],
    ("fixed", "optimizer"): ["adamw", 3, None],
}
LEAVES = list(INVALID)


def _set(spec: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = spec
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def _delete(spec: dict[str, Any], path: tuple[str, ...]) -> None:
    node = spec
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]


@st.composite
def broken_specs(draw: st.DrawFn) -> dict[str, Any]:
    spec = copy.deepcopy(BASE)
    kind = draw(st.sampled_from(["type", "missing", "unknown", "reversed", "log", "log1m"]))
    if kind == "type":
        leaf = draw(st.sampled_from(LEAVES))
        _set(spec, leaf, draw(st.sampled_from(INVALID[leaf])))
    elif kind == "missing":
        _delete(
            spec,
            draw(
                st.sampled_from(
                    [
                        ("name",),
                        ("space",),
                        ("space", "learning_rate", "low"),
                        ("space", "learning_rate", "high"),
                    ]
                )
            ),
        )
    elif kind == "unknown":
        section = draw(st.sampled_from([(), ("data",), ("search",), ("space", "learning_rate")]))
        key = draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=3, max_size=12))
        node = spec
        for part in section:
            node = node[part]
        if key in node:
            key += "_x"
        node[key] = 1
    elif kind == "reversed":
        name = draw(st.sampled_from(["learning_rate", "momentum", "hidden_units"]))
        low, high = spec["space"][name]["low"], spec["space"][name]["high"]
        spec["space"][name]["low"], spec["space"][name]["high"] = high, low
    elif kind == "log":
        _set(spec, ("space", "learning_rate", "low"), draw(st.sampled_from([0, -0.001, -5.0])))
    else:
        bound = draw(st.sampled_from(["low", "high"]))
        _set(spec, ("space", "momentum", bound), draw(st.sampled_from([0.0, 1.0, 1.5, -0.2])))
    return spec


def _validate(
    tmp_path: Path, text: str | bytes, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str]:
    path = tmp_path / "spec.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    code = main(["validate", str(path)])
    return code, capsys.readouterr().err


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(spec=broken_specs())
def test_broken_specs_exit_2_with_paths(
    spec: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _validate(tmp_path, yaml.safe_dump(spec), capsys)
    assert code == 2, (spec, err)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert 2 <= len(lines) <= 40
    problems = [line for line in lines if line.startswith("  - ")]
    # Each problem is "  - <path>: <message>", the path in dotted form (values[1] for a list).
    assert problems and all(re.match(r"  - [A-Za-z_][\w.\[\]]*: \S", p) for p in problems), err


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.one_of(st.binary(min_size=1, max_size=200), st.text(max_size=200)))
def test_arbitrary_bytes_and_text_never_crash(
    data: bytes | str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _validate(tmp_path, data, capsys)
    assert code == 2
    assert "Traceback" not in err and len(err.splitlines()) <= 40


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   \n",
        "name: [unclosed",
        "name: x\n  bad: indent\n",
        "\x00\x01\x02",
        "[1, 2, 3]",
        "name: x\nspace: {lr: !!python/object/apply:os.system [echo owned]}\n",
    ],
)
def test_syntax_errors_empty_binary_and_unsafe_yaml(
    text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _validate(tmp_path, text, capsys)
    assert code == 2 and "Traceback" not in err and "owned" not in err.split("line")[0]


def test_the_base_spec_is_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _validate(tmp_path, yaml.safe_dump(BASE), capsys)
    assert code == 0, err


@st.composite
def deeply_nested_texts(draw: st.DrawFn) -> str:
    """A valid spec whose one value nests far deeper than any spec: flow lists, flow mappings
    or block mappings, a few dozen to a few thousand levels (past Python's recursion limit)."""
    depth = draw(st.integers(min_value=33, max_value=3000))
    style = draw(st.sampled_from(["flow_list", "flow_map", "block_map"]))
    if style == "flow_list":
        value = "[" * depth + "1" + "]" * depth
    elif style == "flow_map":
        value = "{a: " * depth + "1" + "}" * depth
    else:
        value = "".join("\n" + "  " * (level + 2) + "a:" for level in range(depth)) + " 1"
    where = draw(st.sampled_from(["space.learning_rate.low", "fixed.optimizer", "data.seed"]))
    section, *rest = where.split(".")
    spec = copy.deepcopy(BASE)
    node = spec[section]
    for key in rest[:-1]:
        node = node[key]
    node[rest[-1]] = "NESTED"
    text = yaml.safe_dump(spec, default_flow_style=False, sort_keys=False)
    return text.replace("NESTED", value, 1)


@settings(
    max_examples=15,  # each parses up to 3000 levels; 15 cover the three styles and places
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(text=deeply_nested_texts())
def test_deeply_nested_values_exit_2_with_one_message(
    text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _validate(tmp_path, text, capsys)
    assert code == 2, err[-500:]
    assert "Traceback" not in err and "RecursionError" not in err
    header, *problems = err.strip().splitlines()
    assert header.startswith("caviar: error: 1 problem in "), err[-500:]
    assert len(problems) == 1 and problems[0].startswith("  - nests deeper than 32 levels")


def test_an_alias_inside_its_own_anchor_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _validate(tmp_path, "name: x\nspace: &loop {lr: *loop}\n", capsys)
    assert code == 2 and "nests deeper than" in err, err
