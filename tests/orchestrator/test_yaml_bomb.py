"""A spec whose YAML aliases expand exponentially is refused at once, with one line.

"Billion laughs": each anchor is a list of aliases to the one before, so a few hundred bytes
stand for 9**9 values. PyYAML builds that cheaply (aliases share one Python object), but any
walk of the data visits every expansion; the spec loader must refuse it before any walk.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.errors import SpecError
from orchestrator.panda.changes import PandaError, parse_assignments
from orchestrator.spec import parse_spec_text, yaml_text
from orchestrator.spec.yaml_text import YamlShapeError, load_yaml

HEAD = """name: bomb
data: {source: iris}
space:
  learning_rate: {scale: log, low: 0.001, high: 1.0}
"""


def _laughs(levels: int) -> str:
    lines = ['  l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, levels):
        aliases = ", ".join([f"*l{level - 1}"] * 9)
        lines.append(f"  l{level}: &l{level} [{aliases}]")
    return HEAD + "fixed:\n" + "\n".join(lines) + "\n"


BOMB = _laughs(9)  # 9**9 = 387 million "lol"s in under a kilobyte


def test_the_bomb_is_small() -> None:
    assert len(BOMB) < 1000


def _validate(spec: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    # The old loader walked every expansion for minutes: the timeout fails it.
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "validate", str(spec)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done, time.monotonic() - started


def test_caviar_validate_refuses_a_billion_laughs_in_a_second(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(HEAD, encoding="utf-8")
    spec = tmp_path / "bomb.yaml"
    spec.write_text(BOMB, encoding="utf-8")
    ok, baseline = _validate(good)  # Python's start and caviar's imports, on this machine now
    assert ok.returncode == 0, ok.stderr[-1000:]
    done, took = _validate(spec)
    assert done.returncode == 2, done.stderr[-1000:]
    lines = done.stderr.strip().splitlines()
    assert lines == [
        f"caviar: error: 1 problem in {spec}:",
        "  - uses YAML aliases (*name) that expand to more than 100000 values; a spec has a few"
        " hundred: write the values out instead of anchors (&name) built from aliases of other"
        " anchors",
    ], done.stderr
    assert "Traceback" not in done.stderr
    assert took < baseline + 1.0, (took, baseline)  # refusing costs under a second more


def test_the_loader_refuses_it_within_a_second() -> None:
    started = time.monotonic()
    with pytest.raises(SpecError) as caught:
        parse_spec_text(BOMB, "bomb.yaml")
    assert time.monotonic() - started < 1.0
    assert len(caught.value.problems) == 1
    assert "expand to more than" in caught.value.problems[0].message


def test_a_spec_with_a_few_anchors_still_validates() -> None:
    text = HEAD + (
        "  momentum: &frac {scale: log1m, low: 0.9, high: 0.999}\n"
        "  beta1: *frac\n"
        "  batch_size: {values: &sizes [16, 32, 64]}\n"
        "search: {num_trials: 4}\n"
    )
    spec = parse_spec_text(text, "anchors.yaml")
    assert spec.name == "bomb"
    assert sorted(spec.space) == ["batch_size", "beta1", "learning_rate", "momentum"]


def test_the_limit_counts_expanded_values_not_text(monkeypatch: pytest.MonkeyPatch) -> None:
    # 4 levels of 9 = 6561 leaves (+ lists): allowed; 6 levels = 531441 leaves: refused.
    assert load_yaml(_laughs(4))["fixed"]["l3"][0][0][0] == ["lol"] * 9
    with pytest.raises(YamlShapeError):
        load_yaml(_laughs(6))
    # Without aliases, a document that large is a data file, said as such (a lower limit
    # here only to keep the test quick: the pure-Python parser reads 100k values in seconds).
    monkeypatch.setattr(yaml_text, "MAX_EXPANDED_VALUES", 1000)
    big = "[" + ", ".join(["1"] * 1001) + "]"
    with pytest.raises(YamlShapeError, match="is this a data file"):
        load_yaml(big)


def test_merge_keys_count_what_they_merge() -> None:
    # Each level merges the one before twice: the merged pairs double per level.
    lines = ["a0: &a0 {k0: 1, k1: 2}"]
    for level in range(1, 40):
        lines.append(f"a{level}: &a{level} {{<<: [*a{level - 1}, *a{level - 1}]}}")
    started = time.monotonic()
    with pytest.raises(YamlShapeError, match="expand to more than"):
        load_yaml("\n".join(lines))
    assert time.monotonic() - started < 1.0


def test_an_alias_inside_its_own_anchor_is_too_deep() -> None:
    with pytest.raises(YamlShapeError, match="nests deeper than 32 levels"):
        load_yaml("a: &loop [1, *loop]")


def test_panda_set_values_go_through_the_same_loader() -> None:
    # A --set value is YAML too; a bomb there is refused as what it is not: a number.
    laughs = [f"&l0 [{', '.join(['1'] * 9)}]"]
    laughs += [f"&l{n} [{', '.join([f'*l{n - 1}'] * 9)}]" for n in range(1, 7)]
    word = f"x=[{', '.join(laughs)}]"
    with pytest.raises(PandaError, match="expected a number"):
        parse_assignments([word])
    with pytest.raises(YamlShapeError):
        load_yaml(word.partition("=")[2])
