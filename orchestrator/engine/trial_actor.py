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
after the first it takes from the sweep's mailbox (``orchestrator.engine.mailbox``) the
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

import os
import time
from pathlib import Path
from typing import Any

import torch
from ray import tune

from orchestrator.engine.epoch_watchdog import EpochWatchdog
from orchestrator.engine.mailbox import MAILBOX_WAIT_S
from orchestrator.engine.pack_run import MEMBER_FILE, PackRun
from orchestrator.engine.pbt_files import PbtWorkerPlan
from orchestrator.search.pbt import Exploit
from orchestrator.store.journal import RESUME_FROM
from orchestrator.trials import (
    EPOCH_RESULTS,
    PACK_MEMBERS,
    PBT_VALUES,
    TRIAL_INDEX,
)
from trainables import DataSplits, TensorSplits, TrainingSession, get_trainable

STATE_FILE = "state.pt"
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
        self._pack: PackRun | None = None
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
            self._pack = PackRun(self._definition, members, self._tensors, self._device, self._pbt)
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

    def _step_pack(self, pack: PackRun) -> dict[str, Any]:
        if self._mailbox is not None and self.iteration > 0:
            stopped = self._mailbox.take(pack.key, self.iteration, MAILBOX_WAIT_S)
            pack.stop(stopped or (), self._member_dir)
        if not pack.take_decisions():  # its generation is undecided: report the boundary again
            return pack.result({i: [pack.last[i]] for i in pack.live_at_boundary()})
        deadline = time.monotonic() + self._report_every_s
        trained = pack.train(deadline, self._report_at, self._node, self._pid, self._watchdog)
        pack.note_values(trained)
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
        state = pbt.files.load_state(exploit.from_trial, exploit.epoch, self._device)
        self._current = {**state["config"], **exploit.after}
        self._session = self._new_session(self._current)
        self._session.load_state_dict(state["session"])

    def _note_values(self, pbt: PbtWorkerPlan, epochs: list[dict[str, Any]]) -> None:
        """Each epoch's sampled values (the schedule); at a boundary, the state a
        generation's decision may name, saved before the epoch is reported."""
        values = pbt.hp_metrics(self._current)
        for epoch in epochs:
            epoch.update(values)
        last = int(epochs[-1].get("epoch", 0))
        if pbt.is_boundary(last) and self._index is not None and not self._session.finished:
            pbt.files.save_state(int(self._index), last, self._current, self._session.state_dict())

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
