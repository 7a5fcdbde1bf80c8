"""PackSession: K trials of one network shape trained as one fused model, each its own trial.

A pack steps like K TrainingSessions: one step() is one epoch of every live member, and each
member's numbers are what a TrainingSession with its config would report (its own init seed,
shuffling stream, lr schedule, optimizer hyperparameters, BN momentum and BN evaluation mode).
The members only share the kernels: every batch runs one batched forward and backward for all
of them, which is where the speed-up comes from on small networks.

Members are named by their position in the ``configs`` given at construction (the member id);
ids never change. A member leaves the fused tensors (they shrink, "compaction") when it
finishes its epochs, diverges, or is removed; a finished or diverged member's last state is
kept for member_state_dict() and evaluate() until remove() drops it.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from trainables.config import SHAPE_FIELDS, MlpConfig
from trainables.model import BnSoftmaxMLP
from trainables.pack.chunks import contiguous, member_chunks
from trainables.pack.model import FusedMLP, MlpShape
from trainables.pack.optim import PackOptimizer
from trainables.pack.shape import shape_key, validated
from trainables.train import TensorSplits, _stream_seeds, build_optimizer, learning_rate_at

__all__ = ["SHAPE_FIELDS", "PackSession", "shape_key"]


_STATE_FORMAT = "caviar.pack/1"


class PackSession:
    """K members of one shape (see :func:`shape_key`), trained as one fused model.

    ``step()`` trains one epoch of every live member and returns ``{member_id: result}`` with
    TrainingSession.step()'s keys (RESULT_KEYS) and meaning; ``epoch_seconds`` is the pack's
    wall time for the epoch, shared by its members.
    """

    def __init__(
        self,
        configs: Sequence[MlpConfig | Mapping[str, Any]],
        tensors: TensorSplits,
        device: torch.device | str = "cpu",
    ) -> None:
        self.configs: tuple[MlpConfig, ...] = tuple(validated(c) for c in configs)
        if not self.configs:
            raise ValueError("a pack needs at least one member config")
        first = shape_key(self.configs[0])
        for member, cfg in enumerate(self.configs[1:], start=1):
            for (name, want), (_, got) in zip(first, shape_key(cfg), strict=True):
                if want != got:
                    raise ValueError(
                        f"pack members must share {name}: member 0 has {name}={want!r}, "
                        f"member {member} has {name}={got!r}"
                    )
        self.device = torch.device(device)
        self.data = tensors.to(self.device)
        n_train = int(self.data.x_train.shape[0])
        if n_train < 2:
            raise ValueError(f"training needs at least 2 rows, got {n_train}")
        if int(self.data.x_val.shape[0]) < 1:
            raise ValueError("the validation split is empty")

        cfg0 = self.configs[0]
        models: list[BnSoftmaxMLP] = []
        self._generators: list[torch.Generator] = []
        for cfg in self.configs:
            init_seed, shuffle_seed = _stream_seeds(cfg.seed)
            with torch.random.fork_rng(devices=[]):  # TrainingSession's init, exactly
                torch.manual_seed(init_seed)
                models.append(self._new_model(cfg))
            generator = torch.Generator(device="cpu")
            generator.manual_seed(shuffle_seed)
            self._generators.append(generator)
        bn_eps = 1e-5
        if cfg0.layers > 0 and cfg0.batch_norm:
            bn_eps = float(models[0].hidden[0][1].eps)
        self.shape = MlpShape(
            n_features=self.data.n_features,
            n_classes=self.data.n_classes,
            hidden_units=cfg0.hidden_units,
            layers=cfg0.layers,
            activation=cfg0.activation,
            batch_norm=cfg0.batch_norm,
            bn_eps=bn_eps,
        )
        self._param_count = len(self.shape.parameter_names())
        self._epochs: list[int] = [0] * len(self.configs)
        self._diverged: list[bool] = [False] * len(self.configs)
        self._retired: dict[int, dict[str, Any]] = {}  # finished or diverged: last state
        self._removed: set[int] = set()
        self._live: list[int] = list(range(len(self.configs)))  # member id per fused position
        self._install(
            FusedMLP.from_member_states(self.shape, [m.state_dict() for m in models], self.device)
        )

    def _new_model(self, cfg: MlpConfig) -> BnSoftmaxMLP:
        return BnSoftmaxMLP(
            self.data.n_features,
            self.data.n_classes,
            hidden_units=cfg.hidden_units,
            layers=cfg.layers,
            activation=cfg.activation,
            batch_norm=cfg.batch_norm,
            bn_momentum=cfg.bn_momentum,
        )

    def _install(self, fused: FusedMLP, optimizer: PackOptimizer | None = None) -> None:
        """Make ``fused`` (members ``self._live``, in order) the pack's model."""
        fused.set_bn_momentum([self.configs[m].bn_momentum for m in self._live])
        self.fused = fused
        self.optimizer = optimizer or PackOptimizer(
            [self.configs[m] for m in self._live], fused.params
        )

    # -- members -----------------------------------------------------------------------------

    @property
    def member_ids(self) -> tuple[int, ...]:
        """Every member not removed, live or retired."""
        return tuple(m for m in range(len(self.configs)) if m not in self._removed)

    @property
    def live_ids(self) -> tuple[int, ...]:
        """The members the next step() trains, in fused order."""
        return tuple(self._live)

    @property
    def finished(self) -> bool:
        """True once no member is left to train."""
        return not self._live

    def epoch(self, member_id: int) -> int:
        self._check_known(member_id)
        return self._epochs[member_id]

    def diverged(self, member_id: int) -> bool:
        self._check_known(member_id)
        return self._diverged[member_id]

    def member_finished(self, member_id: int) -> bool:
        """TrainingSession.finished for this member (a removed one raises KeyError)."""
        self._check_known(member_id)
        return member_id not in self._live

    def _check_known(self, member_id: int) -> None:
        if not 0 <= member_id < len(self.configs):
            raise KeyError(f"no member {member_id} (the pack has {len(self.configs)})")
        if member_id in self._removed:
            raise KeyError(f"member {member_id} was removed")

    # -- training ----------------------------------------------------------------------------

    def step(self) -> dict[int, dict[str, float | int | bool]]:
        """One epoch of every live member; ``{member_id: result}`` in member-id order.

        Each member follows TrainingSession.step(): lr for its epoch, its own shuffled order,
        the same batch boundaries, its own divergence check per batch. A member whose loss
        turns non-finite leaves the pack at that batch (before the update, as the session
        stops) and the others go on as if it had never been there; one whose validation
        loss is non-finite diverges at the end of the epoch. Members that finish their
        epochs or diverge are retired (their state kept) and compacted out.
        """
        if not self._live:
            raise RuntimeError("step() called on a finished pack (no member left to train)")
        started = time.perf_counter()
        data = self.data
        n_train = int(data.x_train.shape[0])
        batch_size = self.configs[self._live[0]].batch_size
        lrs = {m: learning_rate_at(self.configs[m], self._epochs[m]) for m in self._live}
        self.optimizer.set_learning_rates([lrs[m] for m in self._live])
        orders = torch.stack(
            [torch.randperm(n_train, generator=self._generators[m]) for m in self._live]
        ).to(self.device)
        n_used = n_train - 1 if n_train % batch_size == 1 else n_train

        k = len(self._live)
        loss_sums = torch.zeros(k, dtype=torch.float32, device=self.device)
        correct = torch.zeros(k, dtype=torch.int64, device=self.device)
        diverged_now: list[int] = []
        for start in range(0, n_used, batch_size):
            rows = orders[:, start : start + batch_size]
            logits, losses, yb = self._train_forward(rows, update_stats=True)
            finite = torch.isfinite(losses)
            if not bool(finite.all()):
                bad = [self._live[i] for i in (~finite).nonzero().flatten().tolist()]
                keep = finite.nonzero().flatten()
                for member in bad:  # stop where the session stops: before this update
                    self._epochs[member] += 1
                    self._diverged[member] = True
                diverged_now += bad
                self._retire(bad)
                self._compact(keep)
                if not self._live:
                    break
                orders, loss_sums, correct = orders[keep], loss_sums[keep], correct[keep]
                rows = orders[:, start : start + batch_size]
                # Same batch for the survivors; their BN statistics already took it in.
                logits, losses, yb = self._train_forward(rows, update_stats=False)
            for p in self.fused.params:
                p.grad = None
            losses.sum().backward()  # each member's grads are its own loss's
            self.optimizer.step()
            loss_sums += losses.detach() * rows.shape[1]
            correct += (logits.detach().argmax(dim=2) == yb).sum(dim=1)

        results: dict[int, dict[str, float | int | bool]] = {}
        for member in diverged_now:
            results[member] = self._result(member, math.nan, 0.0, math.nan, 0.0, lrs, started)
        if self._live:
            for member in self._live:
                self._epochs[member] += 1
            self._population_statistics()
            val_loss, val_accuracy = self._evaluate_live(data.x_val, data.y_val)
            train_loss = [s / n_used for s in loss_sums.tolist()]
            train_accuracy = [c / n_used for c in correct.tolist()]
            leaving: list[int] = []
            for i, member in enumerate(self._live):
                if not math.isfinite(val_loss[i]):
                    self._diverged[member] = True
                    results[member] = self._result(
                        member, math.nan, 0.0, math.nan, 0.0, lrs, started
                    )
                else:
                    results[member] = self._result(
                        member,
                        train_loss[i],
                        train_accuracy[i],
                        val_loss[i],
                        val_accuracy[i],
                        lrs,
                        started,
                    )
                if self._diverged[member] or self._epochs[member] >= self.configs[member].epochs:
                    leaving.append(member)
            if leaving:
                self._retire(leaving)
                gone = set(leaving)
                keep = [i for i, m in enumerate(self._live) if m not in gone]
                self._compact(torch.tensor(keep, dtype=torch.int64))
        elapsed = time.perf_counter() - started
        for result in results.values():
            result["epoch_seconds"] = elapsed
        return dict(sorted(results.items()))

    def _train_forward(
        self, rows: torch.Tensor, *, update_stats: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits ``[K, B, C]``, each member's mean cross-entropy ``[K]`` and targets."""
        xb = self.data.x_train[rows]
        yb = self.data.y_train[rows]
        logits = self.fused.forward(xb, train=True, update_stats=update_stats)
        k, b, c = logits.shape
        per_row = F.cross_entropy(logits.reshape(k * b, c), yb.reshape(k * b), reduction="none")
        return logits, per_row.view(k, b).mean(dim=1), yb

    def _result(
        self,
        member: int,
        train_loss: float,
        train_accuracy: float,
        val_loss: float,
        val_accuracy: float,
        lrs: Mapping[int, float],
        started: float,
    ) -> dict[str, float | int | bool]:
        return {
            "epoch": self._epochs[member],
            "train_loss": float(train_loss),
            "train_accuracy": float(train_accuracy),
            "val_loss": float(val_loss),
            "val_accuracy": float(val_accuracy),
            "epoch_seconds": time.perf_counter() - started,
            "learning_rate": float(lrs[member]),
            "diverged": self._diverged[member],
        }

    def _population_statistics(self) -> None:
        """bn_eval='population': the live members that use it get their BN running stats set
        from the whole training set with their final weights."""
        if not self.fused.shape.has_bn:
            return
        positions = [i for i, m in enumerate(self._live) if self.configs[m].bn_eval == "population"]
        if not positions:
            return
        x = self.data.x_train
        for chunk in member_chunks(self.fused.shape, positions, int(x.shape[0])):
            index = torch.tensor(chunk, dtype=torch.int64, device=self.device)
            sub = self.fused.narrow(chunk[0], len(chunk)) if contiguous(chunk) else None
            if sub is None:
                with torch.no_grad():
                    sub = self.fused.select(index)
            stats = sub.population_statistics(x)
            with torch.no_grad():
                for layer, (mean, var) in enumerate(stats):
                    bn = f"hidden.{layer}.1"
                    self.fused.tensors[f"{bn}.running_mean"].index_copy_(0, index, mean)
                    self.fused.tensors[f"{bn}.running_var"].index_copy_(0, index, var)

    def _evaluate_fused(
        self, fused: FusedMLP, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[list[float], list[float]]:
        """Each member's (mean cross-entropy, accuracy) in eval mode."""
        with torch.no_grad():
            logits = fused.forward(x.unsqueeze(0).expand(fused.k, *x.shape), train=False)
            k, n, c = logits.shape
            target = y.unsqueeze(0).expand(k, n)
            per_row = F.cross_entropy(
                logits.reshape(k * n, c), target.reshape(k * n), reduction="none"
            )
            loss = per_row.view(k, n).mean(dim=1)
            correct = (logits.argmax(dim=2) == target).sum(dim=1)
        return loss.tolist(), [c / n for c in correct.tolist()]

    def _evaluate_live(self, x: torch.Tensor, y: torch.Tensor) -> tuple[list[float], list[float]]:
        losses: list[float] = []
        accuracies: list[float] = []
        for chunk in member_chunks(self.fused.shape, range(len(self._live)), int(x.shape[0])):
            loss, accuracy = self._evaluate_fused(self.fused.narrow(chunk[0], len(chunk)), x, y)
            losses += loss
            accuracies += accuracy
        return losses, accuracies

    def evaluate(self, member_id: int, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """TrainingSession.evaluate for one member: (mean cross-entropy, accuracy) in eval
        mode; the same numbers step() reports for its validation."""
        self._check_known(member_id)
        if x.shape[0] == 0:
            raise ValueError("cannot evaluate on an empty split")
        x, y = x.to(self.device), y.to(self.device)
        if member_id in self._live:
            fused = self.fused.narrow(self._live.index(member_id), 1)
        else:
            model_state = self._retired[member_id]["model"]
            fused = FusedMLP.from_member_states(
                self.shape, [model_state], self.device, requires_grad=False
            )
        losses, accuracies = self._evaluate_fused(fused, x, y)
        return losses[0], accuracies[0]

    # -- leaving the pack ----------------------------------------------------------------------

    def _retire(self, members: Iterable[int]) -> None:
        for member in members:
            self._retired[member] = self._live_member_state(member)

    def _compact(self, keep: torch.Tensor) -> None:
        """Keep the fused positions ``keep`` (ascending): tensors shrink to the survivors."""
        positions = keep.tolist()
        self._live = [self._live[i] for i in positions]
        if not self._live:
            return
        fused = self.fused.select(keep)
        self._install(fused, self.optimizer.select(positions, fused.params))

    def remove(self, member_ids: Iterable[int]) -> None:
        """Stop members for good, at any epoch: live ones leave the fused tensors (the
        others' numbers do not change, bit for bit), retired ones drop their kept state.
        Take member_state_dict() first if the member's state is still wanted."""
        ids = sorted(set(member_ids))
        for member in ids:
            if not 0 <= member < len(self.configs):
                raise KeyError(f"no member {member} (the pack has {len(self.configs)})")
        live = [m for m in ids if m in self._live]
        for member in ids:
            self._retired.pop(member, None)
            self._removed.add(member)
        if live:
            keep = [i for i, m in enumerate(self._live) if m not in set(live)]
            self._compact(torch.tensor(keep, dtype=torch.int64))

    # -- state ---------------------------------------------------------------------------------

    def member_state_dict(self, member_id: int) -> dict[str, Any]:
        """Member ``member_id``'s state in TrainingSession.state_dict()'s format: a plain
        TrainingSession with the member's config loads it and goes on (or evaluates) as the
        member would. A snapshot: later training does not change it."""
        self._check_known(member_id)
        if member_id in self._live:
            return self._live_member_state(member_id)
        return copy.deepcopy(self._retired[member_id])

    def _live_member_state(self, member_id: int) -> dict[str, Any]:
        position = self._live.index(member_id)
        cfg = self.configs[member_id]
        epoch = self._epochs[member_id]
        # The param_groups torch.optim would save: the session sets the lr of each epoch
        # before training it, so after epoch e the group holds lr(e - 1).
        template = build_optimizer(
            cfg, [torch.nn.Parameter(torch.empty(0)) for _ in range(self._param_count)]
        )
        groups = copy.deepcopy(template.state_dict()["param_groups"])
        for group in groups:
            group["lr"] = learning_rate_at(cfg, epoch - 1) if epoch > 0 else cfg.learning_rate
        return {
            "model": self.fused.member_state(position),
            "optimizer": {
                "state": self.optimizer.member_state(position),
                "param_groups": groups,
            },
            "epoch": epoch,
            "diverged": self._diverged[member_id],
            "shuffle_rng_state": self._generators[member_id].get_state().clone(),
            "config": cfg.model_dump(),
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume every member exactly: each member's state in
        TrainingSession's format (live and retired), and which members were removed. Holds
        only tensors and plain values (``torch.load(..., weights_only=True)`` reads it)."""
        return {
            "format": _STATE_FORMAT,
            "members": {m: self.member_state_dict(m) for m in self.member_ids},
            "removed": sorted(self._removed),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state_dict() into a pack built with the same configs: training goes on
        bit for bit as if never stopped. The pack's configs win over saved hyperparameters
        (as in TrainingSession.load_state_dict)."""
        if state.get("format") != _STATE_FORMAT:
            raise ValueError(f"not a pack state (format {state.get('format')!r})")
        removed = {int(m) for m in state["removed"]}
        members = {int(m): s for m, s in state["members"].items()}
        expected = set(range(len(self.configs))) - removed
        if set(members) != expected:
            raise ValueError(
                f"the state holds members {sorted(members)}, the pack expects {sorted(expected)}"
            )
        self._rebuild(members, removed)

    def load_member_states(
        self,
        states: Mapping[int, Mapping[str, Any]],
        configs: Mapping[int, MlpConfig | Mapping[str, Any]] | None = None,
    ) -> None:
        """Load several members at once from TrainingSession.state_dict()s (or
        member_state_dict()s), e.g. a pack continued from its members' checkpoints; members
        not in ``states`` keep their current state, removed members come back when given.

        ``configs`` gives some of the loaded members a new configuration of the pack's shape
        (a population-based training copy: its donor's values, perturbed): their optimizer
        hyperparameters, lr schedule and BN momentum follow it from the next epoch."""
        for member_id in states:
            if not 0 <= member_id < len(self.configs):
                raise KeyError(f"no member {member_id} (the pack has {len(self.configs)})")
        if not states:
            return
        self._replace_configs({m: c for m, c in (configs or {}).items() if m in states})
        members = {m: self.member_state_dict(m) for m in self.member_ids if m not in states}
        members.update({int(m): dict(s) for m, s in states.items()})
        self._rebuild(members, self._removed - set(states))

    def _replace_configs(self, configs: Mapping[int, MlpConfig | Mapping[str, Any]]) -> None:
        replaced = list(self.configs)
        for member_id, config in configs.items():
            replaced[member_id] = validated(config)
            if shape_key(replaced[member_id]) != shape_key(self.configs[0]):
                raise ValueError(f"member {member_id}'s new config has another shape")
        self.configs = tuple(replaced)

    def _rebuild(self, members: Mapping[int, Mapping[str, Any]], removed: set[int]) -> None:
        required = {"model", "optimizer", "epoch", "diverged", "shuffle_rng_state"}
        for member, member_state in members.items():
            missing = required - set(member_state)
            if missing:
                raise KeyError(f"member {member}'s state is missing {', '.join(sorted(missing))}")
        live: list[int] = []
        retired: dict[int, dict[str, Any]] = {}
        for member in sorted(members):
            member_state = members[member]
            self._epochs[member] = int(member_state["epoch"])
            self._diverged[member] = bool(member_state["diverged"])
            self._generators[member].set_state(member_state["shuffle_rng_state"].cpu())
            finished = self._epochs[member] >= self.configs[member].epochs
            if self._diverged[member] or finished:
                retired[member] = copy.deepcopy(dict(member_state))
            else:
                live.append(member)
        self._removed = set(removed)
        self._retired = retired
        self._live = live
        if not live:
            return
        fused = FusedMLP.from_member_states(
            self.shape, [members[m]["model"] for m in live], self.device
        )
        self._install(fused)
        for position, member in enumerate(live):
            self.optimizer.load_member_state(position, members[member]["optimizer"]["state"])
