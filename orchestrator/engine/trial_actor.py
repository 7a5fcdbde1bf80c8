"""The thin adapter between a trainable's training session and Ray Tune.

A class ``Trainable`` rather than a function: Ray asks for the next epochs only when the
scheduler wants them (no thread blocking on ``tune.report``), and ``reset_config`` lets one
actor run trial after trial.

One ``step()`` trains until the next epoch the driver must see at once (an ASHA rung, the
last epoch, divergence) or until ``report_every_s`` has passed, and returns every epoch it
trained in ``EPOCH_RESULTS``: a round trip through Ray costs milliseconds of driver and
actor time, as much as a whole epoch of a small network, while ASHA only decides at its
rungs. The driver still logs and journals each epoch as its own step.

A fused pack's trial (config key ``PACK_MEMBERS``) trains its members as one model
(``trainables.pack``) and reports each member's epochs (``MEMBER_RESULTS``); before each step
after the first it takes from the sweep's mailbox (``orchestrator.engine.packs``) the
members the scheduler stopped at its last result, and they leave the pack (their state kept for
the checkpoint). Every checkpoint holds one file per member, in a plain trial's format.

A trial that stays inside one epoch longer than ``epoch_timeout_s`` (a dead-locked data loader,
a hung collective) cannot be interrupted from Python: a watchdog thread ends its worker process,
which Tune sees as the trial's worker dying. It first leaves a note (``TIMEOUT_NOTE``: the
epoch and the limit) in the sweep's ``timeouts`` folder, from which the driver names the
trial's error.

An actor keeps the dataset it was given, already converted to tensors on its device, for its
whole life: the data crosses the object store once per actor, and a trial never reloads it.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch
from ray import tune

from orchestrator.engine.packs import MAILBOX_WAIT_S
from orchestrator.engine.pbt_files import PbtWorkerPlan
from orchestrator.search.pbt import Exploit
from orchestrator.store.journal import RESUME_FROM
from orchestrator.trials import (
    EPOCH_RESULTS,
    HP_PREFIX,
    MEMBER_LAST,
    MEMBER_RESULTS,
    PACK_MEMBERS,
    PBT_VALUES,
    TRIAL_INDEX,
)
from trainables import DataSplits, TensorSplits, TrainingSession, get_trainable
from trainables.registry import TrainableDefinition

STATE_FILE = "state.pt"
MEMBER_FILE = "member-{index}.pt"  # a pack member's state, in STATE_FILE's format
TIMEOUT_NOTE = "{trial_id}.json"  # in the timeouts folder: {"epoch": E, "timeout_s": N}


class CaviarTrainable(tune.Trainable):
    """Runs one trial of a registered trainable, one epoch per ``step``."""

    def setup(
        self,
        config: dict[str, Any],
        data: DataSplits,
        trainable_name: str,
        trainable_path: tuple[str, ...] = (),
        checkpoint_every_s: float = 0.0,
        report_every_s: float = 0.0,
        report_at: tuple[int, ...] = (),
        mailbox: Any = None,
        member_dir: str | None = None,
        epoch_timeout_s: float | None = None,
        timeout_dir: str | None = None,
        pbt: PbtWorkerPlan | None = None,
    ) -> None:
        # The spec's folder where it exists on this node, else the job's working directory.
        search = [p for p in trainable_path if Path(p).is_dir()] + [os.getcwd()]
        self._definition = get_trainable(trainable_name, search)
        self._checkpoint_every_s = checkpoint_every_s
        self._report_every_s = report_every_s
        self._report_at = frozenset(report_at)
        self._mailbox = mailbox  # the scheduler's stops for packs (None: it stops none)
        # Where a stopped pack member's state is written at once (a folder every node sees,
        # like the trials' checkpoints): a Tune checkpoint per stop would idle the pack.
        self._member_dir = Path(member_dir) if member_dir else None
        self._last_checkpoint = time.monotonic()
        cpus = self.trial_resources.required_resources.get("CPU", 1) if self.trial_resources else 1
        torch.set_num_threads(max(1, int(cpus)))
        self._device = _device()
        self._node = _node_id()  # an actor never moves: ask Ray once, not every epoch
        self._pid = os.getpid()  # journaled: shows which worker process ran each trial
        self._tensors = TensorSplits.from_splits(data, self._device)
        self._last_result: dict[str, Any] = {}
        self._pack: _PackRun | None = None
        self._timeout_dir = Path(timeout_dir) if timeout_dir else None
        self._watchdog = EpochWatchdog(epoch_timeout_s)
        self._pbt = pbt  # a population-based training sweep's files and boundaries
        self._start(config)

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        self._last_result = {}
        self._last_checkpoint = time.monotonic()
        self._start(new_config)
        return True

    def _start(self, config: dict[str, Any]) -> None:
        """A new trial, or one a resumed sweep continues from the checkpoint it names."""
        config = dict(config)
        resume_from = config.pop(RESUME_FROM, None)
        self._index = config.pop(TRIAL_INDEX, None)
        # The trial's configuration as it trains now: a PBT copy replaces it with its donor's.
        self._current = config
        self._pbt_applied = -1  # the boundary whose decision this session has taken
        if self._timeout_dir is not None:  # a reused actor runs a trial of another id
            self._watchdog.note = self._timeout_dir / TIMEOUT_NOTE.format(trial_id=self.trial_id)
        members = config.get(PACK_MEMBERS)
        if members is not None:
            self._pack = _PackRun(self._definition, members, self._tensors, self._device)
            if resume_from:
                self._pack.load({int(i): Path(p) for i, p in dict(resume_from).items()})
            return
        self._pack = None
        self._session = self._new_session(config)
        if resume_from:
            self.load_checkpoint(resume_from)

    def step(self) -> dict[str, Any]:
        if self._pack is not None:
            return self._step_pack(self._pack)
        if self._session.finished and self._last_result:
            # Continued from the checkpoint a trial took as it ended (its driver died before
            # journaling the end): report the last epoch again and stop; the driver does not
            # log an epoch twice.
            return {**self._last_result, EPOCH_RESULTS: [self._last_result], "done": True}
        if self._pbt is not None:
            held = self._take_decision(self._pbt)
            if held is not None:
                return held
        deadline = time.monotonic() + self._report_every_s
        epochs: list[dict[str, Any]] = []
        while True:
            done = epochs[-1]["epoch"] if epochs else self._last_result.get("epoch", 0)
            with self._watchdog.watching(int(done) + 1):
                epoch = dict(self._session.step())
            epoch["node_id"] = self._node
            epoch["worker_pid"] = self._pid
            epoch["ended_at"] = time.time()
            epochs.append(epoch)
            if self._must_report(epoch) or time.monotonic() >= deadline:
                break
        if self._pbt is not None:
            self._note_values(self._pbt, epochs)
        self._last_result = epochs[-1]
        result: dict[str, Any] = {**epochs[-1], EPOCH_RESULTS: epochs}
        if self._pbt is not None:
            result[PBT_VALUES] = self._pbt.values_of(self._current)
        if self._session.finished:
            result["done"] = True
        interval = self._checkpoint_every_s
        if interval > 0 and time.monotonic() - self._last_checkpoint >= interval:
            result["should_checkpoint"] = True
        return result

    def _step_pack(self, pack: _PackRun) -> dict[str, Any]:
        if self._mailbox is not None and self.iteration > 0:
            stopped = self._mailbox.take(pack.key, self.iteration, MAILBOX_WAIT_S)
            pack.stop(stopped or (), self._member_dir)
        deadline = time.monotonic() + self._report_every_s
        trained = pack.train(deadline, self._report_at, self._node, self._pid, self._watchdog)
        result = pack.result(trained)
        if pack.finished:
            result["done"] = True
        interval = self._checkpoint_every_s
        if interval > 0 and time.monotonic() - self._last_checkpoint >= interval:
            result["should_checkpoint"] = True
        return result

    def _take_decision(self, pbt: PbtWorkerPlan) -> dict[str, Any] | None:
        """At a generation's boundary, before training on: copy the donor this trial's
        decision names (if any). While the generation is undecided (a trial continued from a
        checkpoint at the boundary), report the boundary epoch again instead of training:
        the scheduler then holds the trial until it is decided."""
        epoch = int(self._last_result.get("epoch", 0))
        if not pbt.is_boundary(epoch) or self._pbt_applied == epoch or self._index is None:
            return None
        found = pbt.files.exploit_for(epoch, int(self._index))
        if found is False:
            again = {**self._last_result, EPOCH_RESULTS: [self._last_result]}
            return {**again, PBT_VALUES: pbt.values_of(self._current)}
        self._pbt_applied = epoch
        if isinstance(found, Exploit):
            self._copy(pbt, found)
        return None

    def _copy(self, pbt: PbtWorkerPlan, exploit: Exploit) -> None:
        """Continue from the donor's state at the boundary (weights, optimizer, BN
        statistics, batch order), with its configuration and the explored values."""
        path = pbt.files.state_path(exploit.from_trial, exploit.epoch)
        state = torch.load(path, map_location=self._device, weights_only=False)
        self._current = {**state["config"], **exploit.after}
        self._session = self._new_session(self._current)
        self._session.load_state_dict(state["session"])

    def _note_values(self, pbt: PbtWorkerPlan, epochs: list[dict[str, Any]]) -> None:
        """Each epoch's sampled values (the schedule); at a boundary, the state a
        generation's decision may name, saved before the epoch is reported."""
        values = {
            f"{HP_PREFIX}{name}": float(value)
            for name in pbt.sampled
            if isinstance(value := self._current.get(name), (int, float))
            and not isinstance(value, bool)
        }
        for epoch in epochs:
            epoch.update(values)
        last = int(epochs[-1].get("epoch", 0))
        if pbt.is_boundary(last) and self._index is not None and not self._session.finished:
            path = pbt.files.state_path(int(self._index), last)
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".tmp")
            torch.save({"config": self._current, "session": self._session.state_dict()}, partial)
            os.replace(partial, path)

    def _must_report(self, epoch: dict[str, Any]) -> bool:
        """An epoch the driver must see before the next one trains: a rung (ASHA decides
        there whether the trial goes on), or the trial's end."""
        return self._session.finished or int(epoch.get("epoch", 0)) in self._report_at

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        self._last_checkpoint = time.monotonic()
        if self._pack is not None:
            self._pack.save(Path(checkpoint_dir))
            return
        torch.save(
            {
                # The configuration it trains with now (a PBT copy's is its donor's): what
                # rebuilds it (the best model's test, ``panda --from``, a resume).
                "config": self._current,
                "session": self._session.state_dict(),
                "last_result": self._last_result,
            },
            Path(checkpoint_dir) / STATE_FILE,
        )

    def load_checkpoint(self, checkpoint: str | dict[str, Any]) -> None:
        if self._pack is not None:  # a failed pack restarted by Tune: every member is there
            directory = Path(str(checkpoint))
            self._pack.load({index: directory for index in self._pack.indices})
            return
        state = torch.load(
            Path(str(checkpoint)) / STATE_FILE, map_location=self._device, weights_only=False
        )
        current = state.get("config")
        if current is not None and current != self._current:  # a PBT copy's configuration
            self._current = dict(current)
            self._session = self._new_session(self._current)
        self._session.load_state_dict(state["session"])
        self._last_result = dict(state.get("last_result", {}))

    def _new_session(self, config: dict[str, Any]) -> TrainingSession:
        return self._definition.make_session(config, self._tensors, self._device)


class EpochWatchdog:
    """Ends this worker process when one epoch runs past ``timeout_s`` (None: never).

    A thread of its own, started with the first watched epoch, checks the deadline a few
    times per timeout; it costs the epoch loop two clock reads. The process exit is the only
    stop a hung epoch cannot ignore: the actor's task thread may be blocked in C code that no
    Python exception reaches. Tune then restarts the trial (``storage.max_failures``) or ends
    it failed, and the driver names the timeout (``StallWatch.timed_out``, engine/stalls.py).
    """

    EXIT_CODE = 124  # what ``timeout(1)`` exits with

    def __init__(self, timeout_s: float | None, note: Path | None = None) -> None:
        self.timeout_s = timeout_s
        self.note = note
        self._deadline: float | None = None
        self._epoch = 0
        self._thread: threading.Thread | None = None

    def watching(self, epoch: int) -> _Watched:
        return _Watched(self, epoch)

    def arm(self, epoch: int) -> None:
        if self.timeout_s is None:
            return
        self._epoch = epoch
        self._deadline = time.monotonic() + self.timeout_s
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._watch, name="caviar-epoch-watchdog", daemon=True
            )
            self._thread.start()

    def disarm(self) -> None:
        self._deadline = None

    def _watch(self) -> None:
        assert self.timeout_s is not None
        period = min(1.0, self.timeout_s / 4)
        while True:
            time.sleep(period)
            deadline = self._deadline
            if deadline is not None and time.monotonic() > deadline:
                self._leave_note()
                print(
                    f"caviar: an epoch ran past resources.epoch_timeout_s "
                    f"({self.timeout_s:g} s); ending this worker (pid {os.getpid()})",
                    file=sys.stderr,
                    flush=True,
                )
                os._exit(self.EXIT_CODE)

    def _leave_note(self) -> None:
        if self.note is None:
            return
        try:
            self.note.parent.mkdir(parents=True, exist_ok=True)
            self.note.write_text(json.dumps({"epoch": self._epoch, "timeout_s": self.timeout_s}))
        except OSError:
            pass  # the driver still names a timeout from its own clock


class _Watched:
    """``with watchdog.watching(epoch):`` one epoch under the watchdog's deadline."""

    def __init__(self, watchdog: EpochWatchdog, epoch: int) -> None:
        self._watchdog = watchdog
        self._epoch = epoch

    def __enter__(self) -> None:
        self._watchdog.arm(self._epoch)

    def __exit__(self, *exc: object) -> None:
        self._watchdog.disarm()


def _device() -> torch.device:
    """The GPU Ray assigned to this actor, else the CPU."""
    import ray

    if ray.get_gpu_ids() and torch.cuda.is_available():
        return torch.device("cuda")  # Ray sets CUDA_VISIBLE_DEVICES to the assigned GPUs
    return torch.device("cpu")


def _node_id() -> str:
    import ray

    try:
        return ray.get_runtime_context().get_node_id()
    except Exception:  # outside Ray (tests of the adapter) there is no node
        return os.uname().nodename


def load_trial_state(checkpoint_dir: str | Path, index: int | None = None) -> dict[str, Any]:
    """Read back what ``save_checkpoint`` wrote: the trial's config and session state (for a
    pack's checkpoint, member ``index``'s)."""
    directory = Path(checkpoint_dir)
    member = directory / MEMBER_FILE.format(index=index)
    path = member if index is not None and member.exists() else directory / STATE_FILE
    return torch.load(path, map_location="cpu", weights_only=False)


class _PackRun:
    """A fused pack's members, by caviar index, with what the actor must remember of them:
    each member's newest epoch and the state of those the scheduler stopped."""

    def __init__(
        self,
        definition: TrainableDefinition,
        members: list[list[Any]],
        tensors: TensorSplits,
        device: torch.device,
    ) -> None:
        if definition.packing is None:
            raise ValueError(f"trainable {definition.name!r} cannot train a fused pack")
        self.indices = [int(index) for index, _ in members]
        self.configs = {int(index): dict(config) for index, config in members}
        self.key = self.indices[0]  # the mailbox's name for this pack
        self._id = {index: position for position, index in enumerate(self.indices)}
        self.session = definition.packing.make_pack(
            [self.configs[i] for i in self.indices], tensors, device
        )
        self.last: dict[int, dict[str, Any]] = {}
        self.left: dict[int, dict[str, Any]] = {}  # stopped members' state at their stop

    @property
    def finished(self) -> bool:
        return bool(self.session.finished)

    def stop(self, indices: Any, member_dir: Path | None = None) -> None:
        """The scheduler stopped these members: they leave the fused model; with
        ``member_dir``, each one's state is saved there now, and its newest epoch names it."""
        leaving = [int(i) for i in indices if int(i) in self._id and int(i) not in self.left]
        for index in leaving:
            self.left[index] = self.session.member_state_dict(self._id[index])
            self.last[index] = {**self.last.get(index, {}), "left": True}
            if member_dir is not None:
                member_dir.mkdir(parents=True, exist_ok=True)
                self._save_member(index, member_dir)
                self.last[index]["checkpoint"] = str(member_dir)
        if leaving:
            self.session.remove([self._id[i] for i in leaving])

    def train(
        self,
        deadline: float,
        report_at: frozenset[int],
        node: str,
        pid: int,
        watchdog: EpochWatchdog | None = None,
    ) -> dict[int, list[dict[str, Any]]]:
        """Epochs of every live member until one reaches a rung, all are done, or the
        deadline passes."""
        trained: dict[int, list[dict[str, Any]]] = {}
        watchdog = watchdog or EpochWatchdog(None)
        while not self.session.finished:
            done = max((int(last.get("epoch", 0)) for last in self.last.values()), default=0)
            with watchdog.watching(done + 1):
                step = self.session.step()
            ended_at = time.time()
            reached_rung = False
            for member, result in step.items():
                index = self.indices[member]
                entry = {**result, "node_id": node, "worker_pid": pid, "ended_at": ended_at}
                trained.setdefault(index, []).append(entry)
                self.last[index] = entry
                reached_rung = reached_rung or int(result.get("epoch", 0)) in report_at
            if reached_rung or time.monotonic() >= deadline:
                break
        return trained

    def result(self, trained: dict[int, list[dict[str, Any]]]) -> dict[str, Any]:
        """The step's result: every member's epochs and newest epoch; at the top level the
        first member's newest epoch (Tune requires the objective there; caviar ignores it)."""
        newest = [self.last[i] for i in self.indices if i in trained] or list(self.last.values())
        top = {
            k: v
            for k, v in (newest[0] if newest else {}).items()
            if k not in ("left", "checkpoint")
        }
        return {
            **top,
            MEMBER_RESULTS: [[index, epochs] for index, epochs in trained.items()],
            MEMBER_LAST: [
                [index, self.last[index]] for index in self.indices if index in self.last
            ],
        }

    def member_state(self, index: int) -> dict[str, Any]:
        if index in self.left:
            return self.left[index]
        return self.session.member_state_dict(self._id[index])

    def save(self, directory: Path) -> None:
        for index in self.indices:
            self._save_member(index, directory)

    def _save_member(self, index: int, directory: Path) -> None:
        """One member's file: written aside and renamed, so a reader never sees half of it."""
        path = directory / MEMBER_FILE.format(index=index)
        partial = path.with_name(path.name + ".partial")
        last = {k: v for k, v in self.last.get(index, {}).items() if k != "checkpoint"}
        torch.save(
            {
                "config": self.configs[index],
                "session": self.member_state(index),
                "last_result": last,
                "left": index in self.left,
            },
            partial,
        )
        os.replace(partial, path)

    def load(self, checkpoints: dict[int, Path]) -> None:
        """Members from their checkpoints (a member without one starts afresh); members that
        had left stay out."""
        states: dict[int, dict[str, Any]] = {}
        leaving: list[int] = []
        for index, directory in checkpoints.items():
            path = directory / MEMBER_FILE.format(index=index)
            if index not in self._id or not path.exists():
                continue
            saved = torch.load(path, map_location="cpu", weights_only=False)
            states[self._id[index]] = saved["session"]
            if saved.get("last_result"):
                self.last[index] = dict(saved["last_result"])
            if saved.get("left"):
                leaving.append(index)
        self.left = {}
        self.session.load_member_states(states)
        self.stop(leaving)  # their files exist already
