"""One optimizer per member over stacked parameters: SGD, Adam and RMSprop as torch runs them.

Each update is the op sequence of torch's single-tensor implementation (the one
``torch.optim`` uses for CPU tensors), applied to the stacked ``[K, ...]`` tensors, with every
member's hyperparameters as a ``[K, 1, ...]`` tensor that broadcasts over its slice. Python
numbers become float32 in torch's kernels, so a float32 tensor holding the same number gives
the same products; where torch adds ``alpha * t`` in one fused step, ``addcmul`` does the
same with a per-member tensor. The members stay independent: every op is elementwise, nothing
is reduced across the member axis, so no member's values depend on which others share the
pack (no clipping, no shared norms).

The state converts to and from each member's ``torch.optim`` state dict (``momentum_buffer``;
``step``, ``exp_avg``, ``exp_avg_sq``; ``step``, ``square_avg``), so a member's checkpoint
loads into a plain ``TrainingSession``. Moments start at zero, which matches torch's first
step exactly: torch clones the first gradient into SGD's buffer, and ``0 * m + g == g``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from trainables.config import MlpConfig

__all__ = ["OPTIMIZER_STATE", "PackOptimizer"]

OPTIMIZER_STATE: dict[str, tuple[str, ...]] = {
    "sgd": ("momentum_buffer",),
    "adam": ("exp_avg", "exp_avg_sq"),
    "rmsprop": ("square_avg",),
}
"""The per-parameter moment tensors of each kind, as torch names them."""


def _scalar_dtype() -> torch.dtype:
    """The dtype torch.optim gives its ``step`` counters (optimizer._get_scalar_dtype)."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


class PackOptimizer:
    """The update of K members' optimizers of one kind, with per-member hyperparameters."""

    def __init__(
        self,
        configs: Sequence[MlpConfig],
        params: Sequence[torch.Tensor],
        *,
        state: list[dict[str, torch.Tensor]] | None = None,
    ) -> None:
        kinds = {c.optimizer for c in configs}
        if len(kinds) != 1:
            raise ValueError(f"a pack's members share one optimizer kind, got {sorted(kinds)}")
        self.kind: str = kinds.pop()
        self.configs = list(configs)
        self.k = len(self.configs)
        self.params = list(params)
        self.steps: list[int] = [0] * self.k  # updates taken, per member (torch's ``step``)
        if state is None:
            state = [
                {
                    name: torch.zeros_like(p, memory_format=torch.contiguous_format)
                    for name in OPTIMIZER_STATE[self.kind]
                }
                for p in self.params
            ]
        self.state: list[dict[str, torch.Tensor]] = state
        self._lr: list[float] = [c.learning_rate for c in self.configs]
        self._build_hyperparameters()

    # -- hyperparameters ---------------------------------------------------------------------

    def _column(self, values: Sequence[float]) -> torch.Tensor:
        device = self.params[0].device
        return torch.tensor([float(v) for v in values], dtype=torch.float32, device=device)

    def _views(self, column: torch.Tensor) -> list[torch.Tensor]:
        """``column`` shaped to broadcast over each parameter's member slices."""
        return [column.view(self.k, *([1] * (p.dim() - 1))) for p in self.params]

    def _build_hyperparameters(self) -> None:
        cfg = self.configs
        self._any_weight_decay = any(c.weight_decay != 0 for c in cfg)
        self._weight_decay = self._views(self._column([c.weight_decay for c in cfg]))
        if self.kind == "sgd":
            self._any_momentum = any(c.momentum != 0 for c in cfg)
            self._momentum = self._views(self._column([c.momentum for c in cfg]))
            nesterov = [c.nesterov for c in cfg]
            self._nesterov = "all" if all(nesterov) else "some" if any(nesterov) else "none"
            mask = torch.tensor(nesterov, dtype=torch.bool, device=self.params[0].device)
            self._nesterov_mask = [mask.view(self.k, *([1] * (p.dim() - 1))) for p in self.params]
        elif self.kind == "adam":
            self._one_minus_beta1 = self._views(self._column([1 - c.beta1 for c in cfg]))
            self._beta2 = self._views(self._column([c.beta2 for c in cfg]))
            self._one_minus_beta2 = self._views(self._column([1 - c.beta2 for c in cfg]))
            self._eps = self._views(self._column([c.eps for c in cfg]))
        elif self.kind == "rmsprop":
            self._alpha = self._views(self._column([c.beta2 for c in cfg]))
            self._one_minus_alpha = self._views(self._column([1 - c.beta2 for c in cfg]))
            self._eps = self._views(self._column([c.eps for c in cfg]))
        else:
            raise ValueError(f"unknown optimizer {self.kind!r}")
        self.set_learning_rates(self._lr)

    def set_learning_rates(self, lrs: Sequence[float]) -> None:
        """Each member's lr for the coming updates (the session sets it once per epoch)."""
        if len(lrs) != self.k:
            raise ValueError(f"expected {self.k} learning rates, got {len(lrs)}")
        self._lr = [float(lr) for lr in lrs]
        self._neg_lr = self._views(self._column([-lr for lr in self._lr]))

    # -- the update ----------------------------------------------------------------------------

    @torch.no_grad()
    def step(self) -> None:
        """One update of every member from the parameters' ``.grad``."""
        if self.kind == "sgd":
            self._sgd()
        elif self.kind == "adam":
            self._adam()
        else:
            self._rmsprop()
        self.steps = [s + 1 for s in self.steps]

    def _grad(self, i: int, p: torch.Tensor) -> torch.Tensor:
        grad = p.grad
        if grad is None:
            raise RuntimeError("a stacked parameter has no gradient; call backward() first")
        if self._any_weight_decay:  # torch: grad.add(param, alpha=weight_decay)
            grad = grad.addcmul(p, self._weight_decay[i])
        return grad

    def _sgd(self) -> None:
        for i, p in enumerate(self.params):
            grad = self._grad(i, p)
            if self._any_momentum:
                buf = self.state[i]["momentum_buffer"]
                buf.mul_(self._momentum[i]).add_(grad)  # dampening 0
                if self._nesterov == "all":
                    grad = grad.addcmul(buf, self._momentum[i])
                elif self._nesterov == "some":
                    grad = torch.where(
                        self._nesterov_mask[i], grad.addcmul(buf, self._momentum[i]), buf
                    )
                else:
                    grad = buf
            p.addcmul_(grad, self._neg_lr[i])  # torch: param.add_(grad, alpha=-lr)

    def _adam(self) -> None:
        # torch computes the bias corrections in Python floats from the step count.
        neg_step_size: list[float] = []
        bias_correction2_sqrt: list[float] = []
        for cfg, lr, done in zip(self.configs, self._lr, self.steps, strict=True):
            step = float(done + 1)
            bias_correction1 = 1 - cfg.beta1**step
            bias_correction2 = 1 - cfg.beta2**step
            neg_step_size.append(-(lr / bias_correction1))
            bias_correction2_sqrt.append(bias_correction2**0.5)
        neg_step = self._views(self._column(neg_step_size))
        bc2_sqrt = self._views(self._column(bias_correction2_sqrt))
        for i, p in enumerate(self.params):
            grad = self._grad(i, p)
            exp_avg = self.state[i]["exp_avg"]
            exp_avg_sq = self.state[i]["exp_avg_sq"]
            exp_avg.lerp_(grad, self._one_minus_beta1[i])
            exp_avg_sq.mul_(self._beta2[i]).addcmul_(grad, grad * self._one_minus_beta2[i])
            denom = (exp_avg_sq.sqrt() / bc2_sqrt[i]).add_(self._eps[i])
            p.addcdiv_(exp_avg * neg_step[i], denom)  # torch: value=-step_size

    def _rmsprop(self) -> None:
        for i, p in enumerate(self.params):
            grad = self._grad(i, p)
            square_avg = self.state[i]["square_avg"]
            square_avg.mul_(self._alpha[i]).addcmul_(grad, grad * self._one_minus_alpha[i])
            avg = square_avg.sqrt().add_(self._eps[i])
            p.addcdiv_(grad * self._neg_lr[i], avg)  # momentum 0, not centered

    # -- compaction and per-member state -------------------------------------------------------

    def select(self, index: Sequence[int], params: Sequence[torch.Tensor]) -> PackOptimizer:
        """The optimizer of the members at ``index`` over their new stacked ``params``."""
        rows = torch.tensor(list(index), dtype=torch.int64, device=self.params[0].device)
        state = [
            {name: tensor.index_select(0, rows) for name, tensor in entry.items()}
            for entry in self.state
        ]
        picked = PackOptimizer([self.configs[i] for i in index], params, state=state)
        picked.steps = [self.steps[i] for i in index]
        picked.set_learning_rates([self._lr[i] for i in index])
        return picked

    def member_state(self, position: int) -> dict[int, dict[str, Any]]:
        """Member ``position``'s ``optimizer.state_dict()["state"]`` as torch.optim keeps it:
        empty before its first update; SGD keeps a buffer only with momentum."""
        steps = self.steps[position]
        if steps == 0:
            return {}
        cfg = self.configs[position]
        if self.kind == "sgd":
            if cfg.momentum == 0:
                return {}
            return {
                i: {"momentum_buffer": s["momentum_buffer"][position].clone()}
                for i, s in enumerate(self.state)
            }
        state: dict[int, dict[str, Any]] = {}
        for i, s in enumerate(self.state):
            entry: dict[str, Any] = {"step": torch.tensor(float(steps), dtype=_scalar_dtype())}
            for name in OPTIMIZER_STATE[self.kind]:
                entry[name] = s[name][position].clone()
            state[i] = entry
        return state

    def load_member_state(self, position: int, state: Mapping[Any, Mapping[str, Any]]) -> None:
        """Set member ``position`` from a torch.optim state dict's ``state`` (missing entries,
        as before a first update, mean zero moments)."""
        steps = 0
        with torch.no_grad():
            for i, s in enumerate(self.state):
                saved = state.get(i, state.get(str(i), {}))  # type: ignore[call-overload]
                for name, tensor in s.items():
                    value = saved.get(name)
                    if value is None:
                        tensor[position].zero_()
                    else:
                        tensor[position].copy_(value)
                if "step" in saved:
                    steps = int(float(saved["step"]))
                elif saved.get("momentum_buffer") is not None:
                    steps = max(steps, 1)
        self.steps[position] = steps
