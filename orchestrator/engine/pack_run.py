"""A fused pack's run inside its trial actor: its members by caviar index, the scheduler's
stops, its checkpoints, and population-based training's copies between members.

Under population-based training (``PbtWorkerPlan``) every member reaches each boundary epoch
together (nothing stops a member early but divergence). Before the boundary is reported, each
live member's state is saved where any trial of the sweep can copy it from
(``pbt_files.py``); before the pack trains on, it reads the generation's decision and each
member it names takes its donor's state and configuration with the explored values. A donor in
the same pack is copied inside the fused model, with no file read; one in another pack, from
the state it saved at the boundary. Packs under PBT share one shape: validation leaves a
population with sampled shape fields unpacked, so a copy never changes a member's shape.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from orchestrator.engine.epoch_watchdog import EpochWatchdog
from orchestrator.engine.pbt_files import PbtWorkerPlan
from orchestrator.search.pbt import Exploit
from orchestrator.trials import MEMBER_LAST, MEMBER_RESULTS, PBT_VALUES
from trainables import TensorSplits
from trainables.registry import TrainableDefinition

MEMBER_FILE = "member-{index}.pt"  # a pack member's state, in a lone trial's STATE_FILE format


class PackRun:
    """A fused pack's members, by caviar index, with what the actor must remember of them:
    each member's newest epoch and the state of those the scheduler stopped."""

    def __init__(
        self,
        definition: TrainableDefinition,
        members: list[list[Any]],
        tensors: TensorSplits,
        device: torch.device,
        pbt: PbtWorkerPlan | None = None,
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
        self.pbt = pbt
        self._applied = -1  # the PBT boundary whose decisions this pack has taken

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
        result = {
            **top,
            MEMBER_RESULTS: [[index, epochs] for index, epochs in trained.items()],
            MEMBER_LAST: [
                [index, self.last[index]] for index in self.indices if index in self.last
            ],
        }
        if self.pbt is not None:  # each member's current values, for the PBT scheduler
            values = self.pbt.values_of
            result[PBT_VALUES] = [[i, values(self.configs[i])] for i in trained]
        return result

    # --- population-based training (the module docstring) -----------------------------

    def live_at_boundary(self) -> list[int]:
        """The live members, when they stand at a PBT boundary whose decisions this pack has
        not taken; otherwise none."""
        if self.pbt is None:
            return []
        live = [self.indices[m] for m in self.session.live_ids]
        epochs = {int(self.last[i].get("epoch", 0)) for i in live if i in self.last}
        if len(epochs) != 1:
            return []
        epoch = epochs.pop()
        return live if self.pbt.is_boundary(epoch) and epoch != self._applied else []

    def take_decisions(self) -> bool:
        """At a boundary, make the copies its generation's decision names; False while the
        generation is undecided (the pack must report the boundary again and wait)."""
        live = self.live_at_boundary()
        if not live:
            return True
        assert self.pbt is not None
        epoch = int(self.last[live[0]].get("epoch", 0))
        decision = self.pbt.files.read_decision(epoch)
        if decision is None:
            return False
        exploits = [Exploit.from_json(data) for data in decision["exploits"]]
        states: dict[int, dict[str, Any]] = {}  # every donor read before any member changes
        configs: dict[int, dict[str, Any]] = {}
        for exploit in (e for e in exploits if e.trial in live):
            if exploit.from_trial in self._id and exploit.from_trial not in self.left:
                state = self.member_state(exploit.from_trial)  # inside the fused model
                config = self.configs[exploit.from_trial]
            else:
                saved = self.pbt.files.load_state(exploit.from_trial, epoch)
                state, config = saved["session"], saved["config"]
            states[self._id[exploit.trial]] = state
            configs[exploit.trial] = {**config, **exploit.after}
        if states:
            self.session.load_member_states(
                states, configs={self._id[i]: c for i, c in configs.items()}
            )
            self.configs.update(configs)
        self._applied = epoch
        return True

    def note_values(self, trained: dict[int, list[dict[str, Any]]]) -> None:
        """Under PBT: each epoch's sampled values (``hp.NAME``, the schedule), and at a
        boundary each live member's state, saved before the boundary is reported."""
        if self.pbt is None:
            return
        for index, epochs in trained.items():
            values = self.pbt.hp_metrics(self.configs[index])
            for epoch in epochs:
                epoch.update(values)
        for index in self.live_at_boundary():
            epoch = int(self.last[index].get("epoch", 0))
            self.pbt.files.save_state(index, epoch, self.configs[index], self.member_state(index))

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
            if saved.get("config") is not None:  # a PBT copy's values, not the searcher's
                self.configs[index] = dict(saved["config"])
            if saved.get("last_result"):
                self.last[index] = dict(saved["last_result"])
            if saved.get("left"):
                leaving.append(index)
        self.left = {}
        configs = {self._id[i]: c for i, c in self.configs.items() if self._id[i] in states}
        self.session.load_member_states(states, configs=configs)
        self.stop(leaving)  # their files exist already
