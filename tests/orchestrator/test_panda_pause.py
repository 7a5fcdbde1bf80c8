"""Babysitting at a person's pace (issue 23 item 17): `caviar panda pause`/`resume` hold a
session at an epoch boundary while it still answers adjust, rewind and stop; `p` in its own
terminal does the same; `panda.start_paused` waits for the person before the first epoch;
`panda.min_epoch_time` slows a fast model down; and `panda.keep_for` keeps every epoch of the
last minutes of training for a rewind (time paused does not count).

The session runs in a thread of this process on a LocalTrainer (no Ray, no MLflow); the
"other shell" is `caviar`'s own main, finding the session by its marker as it would."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.cli import main
from orchestrator.panda.checkpoints import CheckpointStore
from orchestrator.panda.control import COMMANDS, Command, send
from orchestrator.panda.keys import listen, parse_line
from orchestrator.panda.record import read_session
from orchestrator.panda.session import PandaOutcome, PandaSession, rewind_origin
from orchestrator.panda.start import initial_config
from orchestrator.panda.trainer import LocalTrainer
from orchestrator.spec import SweepSpec, parse_spec
from orchestrator.spec.data import load_data
from orchestrator.spec.panda import PandaSpec
from orchestrator.store.journal import JOURNAL, Journal
from orchestrator.store.markers import SweepMarker, write_marker

RUN_ID = "ab" * 16


def _raw(panda: dict[str, Any] | None = None, epochs: int = 8) -> dict[str, Any]:
    return {
        "name": "iris-panda",
        "data": {"source": "iris", "seed": 0},
        "space": {
            "learning_rate": {"scale": "log", "low": 1e-3, "high": 1.0},
            "momentum": {"scale": "log1m", "low": 0.8, "high": 0.99},
        },
        "fixed": {"batch_size": 16, "hidden_units": 8, "epochs": epochs},
        "panda": panda or {},
    }


@pytest.fixture(scope="module")
def iris():
    return load_data(parse_spec(_raw()).data)


class Trainer:
    """A LocalTrainer with a hook after each epoch (to act as the other shell would)."""

    def __init__(self, inner: LocalTrainer, after: Any = None) -> None:
        self.inner, self.after = inner, after

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def step(self) -> dict[str, Any]:
        result = self.inner.step()
        if self.after is not None:
            self.after(int(result["epoch"]))
        return result


class Running:
    """A session in a thread, in a folder `caviar panda pause RUN_ID` finds."""

    def __init__(self, raw: dict[str, Any], data: Any, root: Path, after: Any = None, **kw: Any):
        self.spec: SweepSpec = parse_spec(raw)
        self.folder = root / "caviar_runs" / "iris-panda" / "panda" / "s1"
        self.folder.mkdir(parents=True)
        (self.folder / "spec.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
        (self.folder / "spec_dir").write_text(str(root), encoding="utf-8")
        write_marker(
            self.folder,
            SweepMarker("s1", "running", RUN_ID, "sqlite://", "x", self.spec.spec_hash()),
        )
        trainer = Trainer(LocalTrainer(data, self.spec.trainable), after)
        self.journal = Journal(self.folder / JOURNAL)
        self.session = PandaSession(self.spec, self.folder, trainer, self.journal, None, **kw)
        self.outcome: PandaOutcome | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.session.start(initial_config(self.spec, {}))
            self.outcome = self.session.run()
        except BaseException as error:  # surfaced by join()
            self.error = error

    def start(self) -> Running:
        self.thread.start()
        return self

    def join(self, timeout: float = 60.0) -> PandaOutcome:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the session did not end"
        if self.error is not None:
            raise self.error
        assert self.outcome is not None
        return self.outcome

    def events(self, kind: str) -> list[dict[str, Any]]:
        path = self.folder / JOURNAL
        lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
        return [e for e in map(json.loads, lines) if e["e"] == kind]

    def epochs(self) -> int:
        return len(self.events("result"))


def _wait(condition: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _caviar(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def shell(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CAVIAR_STORAGE_PATH", str(tmp_path / "caviar_runs"))
    return tmp_path


def _curve(outcome: PandaOutcome) -> list[tuple[int, float]]:
    return [(int(e["epoch"]), float(e["val_loss"])) for e in outcome.lineage.branch()]


def test_pause_holds_the_session_and_what_is_changed_while_paused_trains_on_resume(
    iris, shell, capsys
):
    def hold_after_epoch_2(epoch: int) -> None:  # the person types `pause` during epoch 2
        if epoch == 2:
            _wait(lambda: (running.folder / COMMANDS).exists(), "the pause command")

    running = Running(_raw(), iris, shell, hold_after_epoch_2).start()
    _wait(lambda: running.epochs() >= 1, "the first epoch")
    code, out, _ = _caviar(capsys, "panda", "pause", RUN_ID)
    assert code == 0
    assert out.strip() == f"caviar: paused at epoch 2; caviar panda resume {RUN_ID} to go on"

    # paused: no epoch trains, however long the person looks
    time.sleep(2.0)
    assert running.epochs() == 2 and running.session.lineage.epoch == 2

    # commands are answered while paused, and none of them resumes
    code, out, _ = _caviar(capsys, "panda", "pause", RUN_ID)
    assert (
        out.strip() == f"caviar: already paused at epoch 2; caviar panda resume {RUN_ID} to go on"
    )
    code, out, _ = _caviar(capsys, "panda", "adjust", RUN_ID, "lr=0.2", "batch_size=32")
    assert code == 0 and out.strip() == "caviar: applied: segment 1 trains from epoch 2"
    code, _, err = _caviar(capsys, "panda", "adjust", RUN_ID, "layers=3")
    assert code == 2 and "cannot change layers mid-training" in err
    time.sleep(0.5)
    assert running.epochs() == 2

    code, out, _ = _caviar(capsys, "panda", "resume", RUN_ID)
    assert code == 0 and out.strip() == "caviar: resumed at epoch 2"
    outcome = running.join()
    assert outcome.status == "budget" and outcome.lineage.epoch == 8

    # the pause changed nothing but the time: the same curve as the adjustment at epoch 2
    # made without one
    def adjust_after_epoch_2(epoch: int) -> None:
        if epoch == 2:
            send(reference.folder, Command("adjust", {"learning_rate": 0.2, "batch_size": 32}))

    reference = Running(_raw(), iris, shell / "ref", adjust_after_epoch_2)
    assert _curve(reference.start().join()) == _curve(outcome)

    # recorded: the journal's pause and resume, the outcome's pauses (for the summary/MLflow)
    assert [(e["epoch"], e["by"]) for e in running.events("pause")] == [(2, "user")]
    (resumed,) = running.events("resume")
    assert resumed["by"] == "user" and resumed["paused_s"] >= 2.0
    assert [(p.epoch, p.by) for p in outcome.pauses] == [(2, "user")]
    assert outcome.pauses[0].seconds is not None and outcome.pauses[0].seconds >= 2.0
    assert read_session(running.folder).pauses == outcome.pauses


def test_resume_of_a_session_that_is_not_paused_says_so(iris, shell, capsys):
    running = Running(_raw(epochs=100_000), iris, shell).start()
    _wait(lambda: running.epochs() >= 1, "training")
    code, out, _ = _caviar(capsys, "panda", "resume", RUN_ID)
    assert code == 0 and out.startswith("caviar: not paused (training, at epoch ")
    code, out, _ = _caviar(capsys, "panda", "stop", RUN_ID)
    assert code == 0 and running.join().status == "stopped"
    assert not running.events("pause") and running.session.pauses == []


def test_a_session_that_starts_paused_waits_and_a_stop_while_paused_ends_it_cleanly(
    iris, shell, capsys
):
    running = Running(_raw({"start_paused": True}), iris, shell).start()
    _wait(lambda: running.events("pause"), "the pause at the start")
    time.sleep(1.5)
    assert running.epochs() == 0
    assert [(e["epoch"], e["by"]) for e in running.events("pause")] == [(0, "panda.start_paused")]

    code, out, _ = _caviar(capsys, "panda", "stop", RUN_ID)
    assert code == 0 and out.strip() == "caviar: stopped at epoch 0"
    outcome = running.join()
    assert outcome.status == "stopped" and outcome.lineage.epoch == 0
    assert outcome.test_accuracy is not None  # the model it has is still tested, once
    assert outcome.lineage.current.trial.state.ended
    assert outcome.pauses[0].seconds is not None and outcome.pauses[0].seconds >= 1.5
    assert [e["by"] for e in running.events("resume")] == ["the end"]
    assert [e["ended_by"] for e in running.events("end")] == ["stopped"]


def test_p_in_the_sessions_own_terminal_pauses_and_resumes(iris, shell):
    assert parse_line("p").kind == "toggle"  # type: ignore[union-attr]
    assert parse_line(" pause ").kind == "pause"  # type: ignore[union-attr]
    assert parse_line("resume").kind == "resume"  # type: ignore[union-attr]

    def pause_after_epoch_2(epoch: int) -> None:
        if epoch == 2:
            send(running.folder, Command("toggle"))

    running = Running(_raw({"start_paused": True}, epochs=5), iris, shell, pause_after_epoch_2)
    running.start()
    _wait(lambda: running.events("pause"), "the pause at the start")
    listen(running.folder, io.StringIO("p\n"), io.StringIO())  # p, Enter: go on
    _wait(lambda: len(running.events("pause")) == 2, "the second pause")
    time.sleep(1.0)
    assert running.epochs() == 2
    listen(running.folder, io.StringIO("p\n"), io.StringIO())
    outcome = running.join()
    assert outcome.status == "budget" and outcome.lineage.epoch == 5
    kinds = [(e.get("kind"), e["epoch"]) for e in running.events("command")]
    assert kinds == [("resume", 0), ("pause", 2), ("resume", 2)]


class Clock:
    """A clock the trainer and the session's sleeps move (10 s an epoch)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += seconds


def test_keep_for_keeps_every_epoch_of_the_last_minutes_of_training(iris, tmp_path):
    """keep 2, keep_for 35 s, an epoch every 10 s: after epoch 6 the epochs saved in the last
    35 s of training (3..6) are all there, although keep alone would hold 5 and 6; 100 s
    paused after epoch 5 do not age them."""
    clock = Clock()
    raw = _raw({"keep": 2, "keep_for": "35s"}, epochs=6)

    def after(epoch: int) -> None:
        clock.now += 10.0
        if epoch == 5:
            send(running.folder, Command("pause"))

    def sleep(seconds: float) -> None:  # a paused session's polls (10 s each), then resume
        clock.sleep(seconds * 50)
        if clock.slept >= 100.0 and running.session.paused:
            send(running.folder, Command("resume"))

    running = Running(raw, iris, tmp_path, after, clock=clock, sleep=sleep)
    outcome = running.start().join()
    assert outcome.lineage.epoch == 6 and clock.slept >= 100.0
    store = CheckpointStore.for_spec(running.folder / "checkpoints", running.spec.panda)
    assert sorted(store.held()) == [(0, 3), (0, 4), (0, 5), (0, 6)]
    # what it promises: a rewind to epoch 3 is possible, to epoch 2 is refused with the rule
    assert rewind_origin(outcome.lineage, store, 3).index == 0
    with pytest.raises(Exception, match=r"panda.keep = 2 epochs or panda.keep_for = 35s"):
        rewind_origin(outcome.lineage, store, 2)

    # keep_for 0: keep alone decides (the test can fail)
    clock2 = Clock()
    plain = Running(
        _raw({"keep": 2, "keep_for": 0}, epochs=6),
        iris,
        tmp_path / "plain",
        lambda e: setattr(clock2, "now", clock2.now + 10.0),
        clock=clock2,
        sleep=clock2.sleep,
    )
    plain.start().join()
    assert sorted(CheckpointStore(plain.folder / "checkpoints", 2).held()) == [(0, 5), (0, 6)]


def test_keep_for_gives_way_to_keep_max_mb_oldest_first_and_pins_still_hold(tmp_path):
    store = CheckpointStore(tmp_path, keep=2, keep_for=1000.0, keep_max_bytes=2500)
    keys = [(0, e) for e in range(1, 8)]
    for key in keys:
        store.save(*key, b"x" * 1000)
    saved_at = {key: 10.0 * key[1] for key in keys}  # epoch 7 newest, at 70
    # keep: 6, 7; the window (all of them) within 2500 bytes: 5 and 4, not 3
    assert store.wanted(keys, saved_at, 70.0) == [(0, 4), (0, 5), (0, 6), (0, 7)]
    assert store.pin("cmd", 0, 1)
    store.prune(keys, saved_at, 70.0)
    assert sorted(store.held()) == [(0, 1), (0, 4), (0, 5), (0, 6), (0, 7)]
    # a window of 25 s at 70: epochs saved at 45 or later, i.e. 5 (and 6, 7 by keep)
    assert CheckpointStore(tmp_path, 2, 25.0).wanted(keys, saved_at, 70.0) == [
        (0, 5),
        (0, 6),
        (0, 7),
    ]


def test_min_epoch_time_paces_the_epochs_and_commands_are_answered_during_the_wait(iris, tmp_path):
    clock = Clock()
    running = Running(
        _raw({"min_epoch_time": "2s"}, epochs=4),
        iris,
        tmp_path / "paced",
        lambda e: setattr(clock, "now", clock.now + 0.5),
        clock=clock,
        sleep=clock.sleep,
    )
    running.start().join()
    # 4 epochs of 0.5 s each: the session waited 1.5 s after each but the last
    assert clock.slept == pytest.approx(4.5)

    # a stop during a long wait is answered at once, not after it
    slow = Clock()

    def sleep(seconds: float) -> None:
        slow.sleep(seconds)
        if slow.slept >= 1.0 and not (paced.folder / COMMANDS).exists():
            send(paced.folder, Command("stop"))

    paced = Running(
        _raw({"min_epoch_time": "10m"}, epochs=4), iris, tmp_path / "slow", clock=slow, sleep=sleep
    )
    outcome = paced.start().join()
    assert outcome.status == "stopped" and outcome.lineage.epoch == 1
    assert slow.slept < 1.5  # polled every 0.2 s of the 600 s wait


def test_the_spec_takes_durations_and_says_what_it_refuses():
    panda = PandaSpec.model_validate({"keep_for": "5m", "min_epoch_time": "1.5s"})
    assert (panda.keep_for, panda.min_epoch_time) == (300.0, 1.5)
    assert PandaSpec.model_validate({"keep_for": 90}).keep_for == 90.0
    assert PandaSpec().keep_for == 300.0 and PandaSpec().start_paused is False
    for bad, message in [
        ({"keep_for": "5 minutes"}, "is not a duration: give seconds (90) or a number with s"),
        ({"keep_for": -1}, "greater than or equal to 0"),
        ({"keep_max_mb": 0}, "greater than 0"),
        ({"start_paused": "maybe"}, "valid boolean"),
    ]:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            PandaSpec.model_validate(bad)


def test_on_a_terminal_the_pause_line_stays_and_the_block_is_drawn_under_it(iris, tmp_path):
    from orchestrator.panda.live_view import LiveView

    screen = io.StringIO()
    view = LiveView(screen, tty=True)
    running = Running(
        _raw({"start_paused": True}, epochs=3),
        iris,
        tmp_path,
        on_epoch=view.on_epoch,
        on_event=view.on_event,
    )
    running.session.start(initial_config(running.spec, {}))
    lines = screen.getvalue().splitlines()
    assert (
        lines[0]
        == "caviar: epoch 0: paused by panda.start_paused; caviar panda resume RUN_ID to go on"
    )
    assert lines[1] == "epoch 0/3  segment 0 (since epoch 0, start by caviar)"
    assert lines[-1].startswith("  now: batch_size=16")
    running.journal.close()
