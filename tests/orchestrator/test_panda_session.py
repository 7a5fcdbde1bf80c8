"""The panda session's loop on a trainer in this process (no Ray, no MLflow): adjustments and
rewinds are exact, rules fire as a person's adjustment would be recorded, refusals change
nothing, and a session rebuilt from its journal continues exactly."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.panda.checkpoints import PIN_TTL_S, CheckpointStore
from orchestrator.panda.control import Command, send
from orchestrator.panda.record import read_session
from orchestrator.panda.session import PandaOutcome, PandaSession
from orchestrator.panda.start import initial_config
from orchestrator.panda.trainer import LocalTrainer
from orchestrator.spec import SweepSpec, parse_spec
from orchestrator.spec.data import load_data
from orchestrator.store.journal import JOURNAL, Journal


def _spec(panda: dict[str, Any] | None = None, **fixed: Any) -> SweepSpec:
    return parse_spec(
        {
            "name": "iris-panda",
            "data": {"source": "iris", "seed": 0},
            "space": {
                "learning_rate": {"scale": "log", "low": 1e-3, "high": 1.0},
                "momentum": {"scale": "log1m", "low": 0.8, "high": 0.99},
            },
            "fixed": {"batch_size": 16, "hidden_units": 8, "epochs": 6, **fixed},
            "panda": panda or {},
        }
    )


class Scripted:
    """A LocalTrainer that sends commands to the session's folder after given epochs: the
    session reads them at the next boundary, as it would one from another shell."""

    def __init__(self, inner: LocalTrainer, folder: Path, script: dict[int, list[Command]]):
        self.inner, self.folder, self.script = inner, folder, dict(script)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def step(self) -> dict[str, Any]:
        result = self.inner.step()
        for command in self.script.pop(int(result["epoch"]), []):
            send(self.folder, command)
        return result


@pytest.fixture(scope="module")
def iris():
    return load_data(_spec().data)


def _run(
    spec: SweepSpec,
    data: Any,
    folder: Path,
    script: dict[int, list[Command]] | None = None,
    sets: dict[str, Any] | None = None,
) -> PandaOutcome:
    folder.mkdir(parents=True)
    trainer = Scripted(LocalTrainer(data, spec.trainable), folder, script or {})
    session = PandaSession(spec, folder, trainer, Journal(folder / JOURNAL), None)
    session.start(initial_config(spec, sets or {}))
    return session.run()


def _curve(outcome: PandaOutcome, key: str = "val_loss") -> list[tuple[int, float]]:
    return [(int(e["epoch"]), float(e[key])) for e in outcome.lineage.branch()]


def _script() -> dict[int, list[Command]]:
    return {
        2: [Command("adjust", {"learning_rate": 0.2, "batch_size": 32})],
        4: [Command("adjust", {"momentum": 0.5, "bn_momentum": 0.3}, rewind_to=3)],
    }


def test_the_same_adjustments_at_the_same_epochs_give_bit_identical_curves(iris, tmp_path):
    spec = _spec()
    a = _run(spec, iris, tmp_path / "a", _script())
    b = _run(spec, iris, tmp_path / "b", _script())
    assert _curve(a) == _curve(b)
    assert _curve(a, "train_loss") == _curve(b, "train_loss")
    assert [e for e, _ in _curve(a)] == [1, 2, 3, 4, 5, 6]  # the branch: one entry per epoch
    segments = a.lineage.segments
    assert [(s.parent, s.start_epoch, s.reason) for s in segments.values()] == [
        (None, 0, "start"),
        (0, 2, "adjust"),
        (1, 3, "rewind"),
    ]
    assert segments[2].config["momentum"] == 0.5 and segments[2].config["batch_size"] == 32
    # the abandoned epoch 4 stays in its segment
    assert [int(e["epoch"]) for e in segments[1].trial.history] == [3, 4]
    # and a different adjustment gives a different curve (the test can fail)
    other = _run(spec, iris, tmp_path / "c", {2: [Command("adjust", {"learning_rate": 0.1})]})
    assert _curve(other)[2:] != _curve(a)[2:]


def test_a_rewind_starts_at_the_named_epochs_checkpoint(iris, tmp_path):
    spec = _spec()
    plain = _run(spec, iris, tmp_path / "plain")
    rewound = _run(spec, iris, tmp_path / "rw", {4: [Command("adjust", {}, rewind_to=2)]})
    old, new = rewound.lineage.segments[0], rewound.lineage.segments[1]
    assert new.start_epoch == 2 and new.parent == 0
    # no change: the branch from epoch 2's checkpoint repeats epochs 3.. bit for bit
    assert new.trial.history[0]["epoch"] == 3
    assert new.trial.history[0]["val_loss"] == old.trial.history[2]["val_loss"]
    assert _curve(rewound) == _curve(plain)
    # with a change: the branch is the model of epoch 2 adjusted there
    changed = _run(
        spec, iris, tmp_path / "ch", {4: [Command("adjust", {"learning_rate": 0.3}, rewind_to=2)]}
    )
    direct = _run(spec, iris, tmp_path / "dir", {2: [Command("adjust", {"learning_rate": 0.3})]})
    assert _curve(changed) == _curve(direct)


def test_a_forced_plateau_lowers_the_learning_rate_like_an_adjustment(iris, tmp_path):
    # min_delta 1.0: no accuracy gain counts, so the objective is flat by construction
    spec = _spec({"rules": {"plateau": {"patience": 2, "factor": 0.5, "min_delta": 1.0}}})
    outcome = _run(spec, iris, tmp_path / "p")
    segments = list(outcome.lineage.segments.values())
    # epoch 1 sets the best; epochs 2 and 3 do not beat it: the rule fires after epoch 3, and
    # again 2 epochs after its own change
    assert [(s.start_epoch, s.by) for s in segments] == [
        (0, "caviar"),
        (3, "rule:plateau"),
        (5, "rule:plateau"),
    ]
    rates = [s.config["learning_rate"] for s in segments]
    assert rates[1] == rates[0] * 0.5 and rates[2] == rates[1] * 0.5
    assert segments[1].changes == {"learning_rate": rates[1]}
    lrs = [e["learning_rate"] for e in outcome.lineage.branch()]
    assert lrs == [rates[0]] * 3 + [rates[1]] * 2 + [rates[2]]
    journal = (tmp_path / "p" / JOURNAL).read_text()
    assert journal.count('"by":"rule:plateau"') == 2


def test_a_forced_divergence_rewinds_to_the_last_good_epoch_with_a_lower_rate(iris, tmp_path):
    # Without batch norm a learning rate of 1000 is NaN within the first epoch.
    spec = _spec({"rules": {"divergence": {"factor": 1e-4}}}, batch_norm=False)
    outcome = _run(spec, iris, tmp_path / "d", sets={"learning_rate": 1000.0})
    segments = outcome.lineage.segments
    assert segments[0].trial.history[0]["diverged"]  # epoch 1 blew up
    rescue = segments[1]
    assert (rescue.parent, rescue.start_epoch, rescue.by) == (0, 0, "rule:divergence")
    assert rescue.config["learning_rate"] == pytest.approx(0.1)
    assert outcome.status == "budget"
    assert [int(e["epoch"]) for e in outcome.lineage.branch()] == [1, 2, 3, 4, 5, 6]
    assert not any(e["diverged"] for e in outcome.lineage.branch())


def test_a_divergence_without_the_rule_ends_the_session(iris, tmp_path):
    spec = _spec(batch_norm=False)
    outcome = _run(spec, iris, tmp_path / "x", sets={"learning_rate": 1000.0})
    assert outcome.status == "diverged" and outcome.lineage.epoch == 1


def test_the_stop_rule_and_a_persons_stop(iris, tmp_path):
    spec = _spec({"rules": {"stop": {"patience": 2, "min_delta": 1.0}}})
    assert _run(spec, iris, tmp_path / "s").status == "rule:stop"
    stopped = _run(_spec(), iris, tmp_path / "p", {3: [Command("stop")]})
    assert stopped.status == "stopped" and stopped.lineage.epoch == 3


def test_refused_commands_change_nothing_and_say_why(iris, tmp_path):
    spec = _spec({"keep": 2, "keep_for": 0})
    script = {
        4: [
            Command("adjust", {}, rewind_to=1, id="old"),
            Command("adjust", {"layers": 3}, id="shape"),
            Command("adjust", {"learning_rate": -1}, id="bad"),
        ]
    }
    refused = _run(spec, iris, tmp_path / "r", script)
    plain = _run(spec, iris, tmp_path / "plain")
    assert _curve(refused) == _curve(plain)
    assert len(refused.lineage.segments) == 1
    answers = read_session(tmp_path / "r").answers
    assert {k: v["status"] for k, v in answers.items()} == dict.fromkeys(
        ("old", "shape", "bad"), "refused"
    )
    assert "no longer kept (panda.keep = 2; kept now: epochs 3..4)" in answers["old"]["reason"]
    assert "network's shape" in answers["shape"]["reason"]
    assert answers["bad"]["reason"].startswith("learning_rate=-1:")
    # keep = 2: only the two newest checkpoints of the branch are on disk
    held = sorted(p.name for p in (tmp_path / "r" / "checkpoints").iterdir())
    assert held == ["s0000-e00005.pt", "s0000-e00006.pt"]


def test_a_rewind_checked_by_another_shell_keeps_its_checkpoint_until_the_session_reads_it(
    iris, tmp_path
):
    """`caviar panda adjust --rewind-to` pins the checkpoint it checked; the session may train
    several epochs (past ``keep``) before it reads the command, and still rewinds there."""
    spec = _spec({"keep": 2, "keep_for": 0}, epochs=8)
    folder = tmp_path / "pin"
    late = Command("adjust", {}, rewind_to=2, id="late")

    class ShellAfterEpoch2(Scripted):
        def step(self) -> dict[str, Any]:
            result = super().step()
            # the client's check, during epoch 3 (epoch 2's checkpoint is kept now): pinned
            if result["epoch"] == 3 and len(session.lineage.segments) == 1:
                assert CheckpointStore(folder / "checkpoints", 2).pin(late.id, 0, 2)
            if result["epoch"] == 6 and len(session.lineage.segments) == 1:  # 3 epochs later
                send(folder, late)
            return result

    folder.mkdir()
    trainer = ShellAfterEpoch2(LocalTrainer(iris, spec.trainable), folder, {})
    session = PandaSession(spec, folder, trainer, Journal(folder / JOURNAL), None)
    session.start(initial_config(spec, {}))
    outcome = session.run()
    assert read_session(folder).answers["late"]["status"] == "applied"
    assert outcome.lineage.segments[1].start_epoch == 2
    # answered: the pin is gone and epoch 2's file with it
    assert not any((folder / "checkpoints" / "pins").iterdir())
    assert not CheckpointStore(folder / "checkpoints", 2).has(0, 2)

    # without the pin the same late command is refused (the test can fail)
    unpinned = _run(
        spec, iris, tmp_path / "nopin", {6: [Command("adjust", {}, rewind_to=2, id="x")]}
    )
    assert read_session(tmp_path / "nopin").answers["x"]["status"] == "refused"
    assert len(unpinned.lineage.segments) == 1


def test_a_stale_pin_lapses(tmp_path):
    store = CheckpointStore(tmp_path, keep=1)
    for epoch in (1, 2, 3):
        store.save(0, epoch, b"x")
    assert store.pin("gone", 0, 1) and not store.pin("never", 0, 9)
    store.prune([(0, 1), (0, 2), (0, 3)])
    assert store.held() == {(0, 1), (0, 3)}
    old = time.time() - PIN_TTL_S - 1
    os.utime(tmp_path / "pins" / "gone", (old, old))
    store.prune([(0, 1), (0, 2), (0, 3)])
    assert store.held() == {(0, 3)} and not (tmp_path / "pins" / "gone").exists()


def test_a_session_rebuilt_from_its_journal_continues_exactly(iris, tmp_path):
    spec = _spec()
    whole = _run(spec, iris, tmp_path / "whole", _script())

    class Killed(Exception):
        pass

    folder = tmp_path / "killed"
    folder.mkdir()
    inner = LocalTrainer(iris, spec.trainable)
    trainer = Scripted(inner, folder, _script())
    original = trainer.step

    def step_until_killed() -> dict[str, Any]:
        result = original()
        if result["epoch"] == 5:
            raise Killed  # after the rewind, before epoch 5 is journaled
        return result

    trainer.step = step_until_killed  # type: ignore[method-assign]
    session = PandaSession(spec, folder, trainer, Journal(folder / JOURNAL), None)
    session.start(initial_config(spec, {}))
    with pytest.raises(Killed):
        session.run()
    session.journal.close()

    record = read_session(folder)
    assert record.lineage.epoch == 4
    resumed = PandaSession(
        spec,
        folder,
        LocalTrainer(iris, spec.trainable),
        Journal(folder / JOURNAL),
        None,
        lineage=record.lineage,
        answered=set(record.answers),
    )
    resumed.resume()
    outcome = resumed.run()
    assert _curve(outcome) == _curve(whole)
    assert len(outcome.lineage.segments) == 3  # the answered commands are not applied twice
