"""K networks of one shape as one: every weight stacked along a leading member axis.

Member k of a :class:`FusedMLP` is exactly a :class:`~trainables.model.BnSoftmaxMLP`: its
tensors are ``tensor[k]`` of the stacked ones, under the same state-dict names
(``hidden.0.0.weight``, ``hidden.0.1.running_mean``, ``output.bias``...), so a member's
state converts both ways without renaming. The forward pass runs all members at once and
keeps them independent, each computed with the same kernels as the single network:

- a Linear is ``torch.bmm`` (``baddbmm`` with a bias) over weights kept in nn.Linear's
  ``[out, in]`` layout, so each member's product is the same BLAS call F.linear makes, and
  its backward solves the products nn.Linear's backward solves (:func:`batched_linear`);
- BatchNorm is torch's own ``F.batch_norm`` over the ``[B, K*H]`` view, every (member, unit)
  one channel, so the statistics, the normalization and its gradient are the native kernel's
  per channel; folding BN into ``h * scale + shift`` would round differently.

The running statistics take each member's own ``bn_momentum``: members that share a value
are updated by the kernel itself; the others are recomputed by the same kernel on their
columns from the statistics before the batch (see :meth:`FusedMLP.forward`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["ACTIVATION_FUNCTIONS", "FusedMLP", "MlpShape", "batched_linear"]

ACTIVATION_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": torch.relu,  # what nn.ReLU, nn.Tanh and nn.Sigmoid call
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
}


@dataclass(frozen=True)
class MlpShape:
    """What every member of a pack shares: the network's structure."""

    n_features: int
    n_classes: int
    hidden_units: int
    layers: int
    activation: str
    batch_norm: bool
    bn_eps: float = 1e-5  # nn.BatchNorm1d's default, which BnSoftmaxMLP keeps

    @property
    def has_bn(self) -> bool:
        return self.batch_norm and self.layers > 0

    def parameter_names(self) -> tuple[str, ...]:
        """BnSoftmaxMLP.parameters() order: the optimizer's parameter indices."""
        names: list[str] = []
        for layer in range(self.layers):
            names.append(f"hidden.{layer}.0.weight")
            if self.batch_norm:
                names += [f"hidden.{layer}.1.weight", f"hidden.{layer}.1.bias"]
            else:
                names.append(f"hidden.{layer}.0.bias")
        return (*names, "output.weight", "output.bias")

    def state_names(self) -> tuple[str, ...]:
        """BnSoftmaxMLP.state_dict() order (parameters, then each BN's buffers)."""
        names: list[str] = []
        for layer in range(self.layers):
            names.append(f"hidden.{layer}.0.weight")
            if self.batch_norm:
                bn = f"hidden.{layer}.1"
                names += [f"{bn}.{n}" for n in _BN_STATE]
            else:
                names.append(f"hidden.{layer}.0.bias")
        return (*names, "output.weight", "output.bias")


_BN_STATE = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


class _BatchedLinear(torch.autograd.Function):
    """K Linears at once: ``x[k] @ weight[k].T + bias[k]`` for inputs ``[K, B, in]`` and
    weights ``[K, out, in]``, with the gradients computed as F.linear's are.

    The forward is the BLAS call F.linear makes (``bmm``/``baddbmm`` run one ``addmm`` per
    member). Autograd's own backward of ``bmm(x, weight.transpose(1, 2))`` would compute
    ``x.T @ grad`` (the weight gradient transposed), a different BLAS problem from
    ``grad.T @ x`` that nn.Linear's backward solves, rounded differently; here every
    gradient is the product nn.Linear computes, in its orientation, so a member's
    gradients are a single network's bit for bit.
    """

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        if bias is None:
            return torch.bmm(x, weight.transpose(1, 2))
        return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))

    @staticmethod
    def backward(
        ctx: Any, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.bmm(grad, weight)  # nn.Linear: grad.mm(weight)
        if ctx.needs_input_grad[1]:
            grad_weight = torch.bmm(grad.transpose(1, 2), x)  # nn.Linear: grad.t().mm(x)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum(dim=1)  # nn.Linear: grad.sum(0), per member
        return grad_x, grad_weight, grad_bias


def batched_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``[K, B, out]``: member k's ``F.linear(x[k], weight[k], bias[k])``, gradients included."""
    return _BatchedLinear.apply(x, weight, bias)


class FusedMLP:
    """The stacked tensors of K members and the fused forward pass.

    ``tensors`` maps each BnSoftmaxMLP state-dict name to a tensor with a leading member axis;
    the parameters among them are leaf tensors that require grad (the optimizer's ``params``),
    the BN buffers are plain tensors updated in place by training forwards.
    """

    def __init__(self, shape: MlpShape, tensors: Mapping[str, torch.Tensor]) -> None:
        missing = set(shape.state_names()) - set(tensors)
        if missing:
            raise KeyError(f"fused state is missing {', '.join(sorted(missing))}")
        self.shape = shape
        self.tensors: dict[str, torch.Tensor] = dict(tensors)
        self.k = int(self.tensors["output.bias"].shape[0])
        self._bn_momentum: list[float] = [0.1] * self.k
        self._bn_groups: list[tuple[float, torch.Tensor | None]] = []
        self._regroup()

    # -- construction, slicing, conversion ------------------------------------------------

    @classmethod
    def from_member_states(
        cls,
        shape: MlpShape,
        states: Sequence[Mapping[str, torch.Tensor]],
        device: torch.device,
        *,
        requires_grad: bool = True,
    ) -> FusedMLP:
        """Stack members' BnSoftmaxMLP state dicts (copied, on ``device``)."""
        if not states:
            raise ValueError("a fused network needs at least one member")
        params = set(shape.parameter_names())
        tensors: dict[str, torch.Tensor] = {}
        for name in shape.state_names():
            stacked = torch.stack([state[name].detach().to(device) for state in states])
            if name in params and requires_grad:
                stacked.requires_grad_(True)
            tensors[name] = stacked
        return cls(shape, tensors)

    @property
    def params(self) -> list[torch.Tensor]:
        """The stacked parameters, in BnSoftmaxMLP.parameters() order."""
        return [self.tensors[name] for name in self.shape.parameter_names()]

    def set_bn_momentum(self, momenta: Sequence[float]) -> None:
        """Each member's BN momentum (weight of the new batch in the running averages)."""
        if len(momenta) != self.k:
            raise ValueError(f"expected {self.k} momenta, got {len(momenta)}")
        self._bn_momentum = [float(m) for m in momenta]
        self._regroup()

    def _regroup(self) -> None:
        """Members by BN momentum: the largest group is updated by the kernel in place, the
        others get their columns recomputed (no group at all when there is no BN)."""
        if not self.shape.has_bn:
            self._bn_groups = []
            return
        by_value: dict[float, list[int]] = {}
        for member, momentum in enumerate(self._bn_momentum):
            by_value.setdefault(momentum, []).append(member)
        ordered = sorted(by_value.items(), key=lambda item: (-len(item[1]), item[0]))
        h = self.shape.hidden_units
        device = self.tensors["output.bias"].device
        groups: list[tuple[float, torch.Tensor | None]] = [(ordered[0][0], None)]
        for momentum, members in ordered[1:]:
            columns = torch.tensor(
                [m * h + u for m in members for u in range(h)], dtype=torch.int64, device=device
            )
            groups.append((momentum, columns))
        self._bn_groups = groups

    def select(self, index: torch.Tensor) -> FusedMLP:
        """A new FusedMLP of the members at ``index`` (positions, in order): copies, with the
        parameters new leaves, so the dropped members no longer cost memory or compute."""
        index = index.to(self.tensors["output.bias"].device)
        params = set(self.shape.parameter_names())
        tensors: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for name, tensor in self.tensors.items():
                picked = tensor.detach().index_select(0, index)
                if name in params:
                    picked.requires_grad_(True)
                tensors[name] = picked
        fused = FusedMLP(self.shape, tensors)
        fused.set_bn_momentum([self._bn_momentum[i] for i in index.tolist()])
        return fused

    def narrow(self, start: int, length: int) -> FusedMLP:
        """Members ``start:start+length`` as views (for evaluation without copies)."""
        tensors = {name: t.detach().narrow(0, start, length) for name, t in self.tensors.items()}
        fused = FusedMLP(self.shape, tensors)
        fused.set_bn_momentum(self._bn_momentum[start : start + length])
        return fused

    def member_state(self, position: int) -> OrderedDict[str, torch.Tensor]:
        """Member ``position``'s BnSoftmaxMLP state dict (cloned tensors, same names)."""
        return OrderedDict(
            (name, self.tensors[name][position].detach().clone())
            for name in self.shape.state_names()
        )

    # -- forward ----------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, *, train: bool, update_stats: bool = True) -> torch.Tensor:
        """Logits ``[K, B, n_classes]`` from inputs ``[K, B, n_features]``.

        ``train``: BN normalizes with the batch statistics and, with ``update_stats``,
        updates the running ones and ``num_batches_tracked`` as BatchNorm1d.train() does;
        otherwise BN uses the stored running statistics (eval mode).
        """
        shape = self.shape
        act = ACTIVATION_FUNCTIONS[shape.activation]
        t = self.tensors
        k, h = self.k, shape.hidden_units
        a = x
        for layer in range(shape.layers):
            weight = t[f"hidden.{layer}.0.weight"]
            if not shape.batch_norm:
                a = act(batched_linear(a, weight, t[f"hidden.{layer}.0.bias"]))
                continue
            z = batched_linear(a, weight)  # [K, B, H]
            rows = z.shape[1]
            z2 = z.transpose(0, 1).reshape(rows, k * h)  # channel m*H + u: member m, unit u
            bn = f"hidden.{layer}.1"
            gamma = t[f"{bn}.weight"].reshape(k * h)
            beta = t[f"{bn}.bias"].reshape(k * h)
            if train:
                out = self._batch_norm_train(z2, bn, gamma, beta, update_stats)
            else:
                out = F.batch_norm(
                    z2,
                    t[f"{bn}.running_mean"].view(k * h),
                    t[f"{bn}.running_var"].view(k * h),
                    gamma,
                    beta,
                    False,
                    0.0,
                    shape.bn_eps,
                )
            a = act(out).view(rows, k, h).transpose(0, 1)
        return batched_linear(a, t["output.weight"], t["output.bias"])

    def _batch_norm_train(
        self,
        z2: torch.Tensor,
        bn: str,
        gamma: torch.Tensor,
        beta: torch.Tensor,
        update_stats: bool,
    ) -> torch.Tensor:
        eps = self.shape.bn_eps
        if not update_stats:
            return F.batch_norm(z2, None, None, gamma, beta, True, 0.0, eps)
        t = self.tensors
        n = self.k * self.shape.hidden_units
        running_mean = t[f"{bn}.running_mean"].view(n)
        running_var = t[f"{bn}.running_var"].view(n)
        # The statistics before this batch of the members not in the kernel's group.
        before = [
            (momentum, columns, running_mean[columns], running_var[columns])
            for momentum, columns in self._bn_groups[1:]
            if columns is not None
        ]
        if not before:  # one momentum: the kernel updates the running statistics in place
            out = F.batch_norm(
                z2, running_mean, running_var, gamma, beta, True, self._bn_groups[0][0], eps
            )
        else:
            # Autograd keeps the statistics tensors it was given, so the kernel updates
            # copies, which then go back with the other groups' columns recomputed.
            mean_all, var_all = running_mean.clone(), running_var.clone()
            out = F.batch_norm(z2, mean_all, var_all, gamma, beta, True, self._bn_groups[0][0], eps)
            detached = z2.detach()
            with torch.no_grad():
                running_mean.copy_(mean_all)
                running_var.copy_(var_all)
                for momentum, columns, mean, var in before:
                    F.batch_norm(
                        detached.index_select(1, columns),
                        mean,
                        var,
                        None,
                        None,
                        True,
                        momentum,
                        eps,
                    )
                    running_mean.index_copy_(0, columns, mean)
                    running_var.index_copy_(0, columns, var)
        t[f"{bn}.num_batches_tracked"].add_(1)
        return out

    def population_statistics(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per BN layer, each member's (mean, biased var) ``[K, H]`` of its BN input over all
        of ``x`` with the current weights: recompute_population_statistics' pass, where every
        BN normalizes with the full-set statistics. Nothing is written."""
        shape = self.shape
        act = ACTIVATION_FUNCTIONS[shape.activation]
        t = self.tensors
        k, h = self.k, shape.hidden_units
        stats: list[tuple[torch.Tensor, torch.Tensor]] = []
        with torch.no_grad():
            a = x.unsqueeze(0).expand(k, *x.shape)
            for layer in range(shape.layers):
                z = torch.bmm(a, t[f"hidden.{layer}.0.weight"].transpose(1, 2))
                rows = z.shape[1]
                z2 = z.transpose(0, 1).reshape(rows, k * h)
                var, mean = torch.var_mean(z2, dim=0, unbiased=False)
                stats.append((mean.view(k, h), var.view(k, h)))
                bn = f"hidden.{layer}.1"
                out = F.batch_norm(
                    z2,
                    None,
                    None,
                    t[f"{bn}.weight"].reshape(k * h),
                    t[f"{bn}.bias"].reshape(k * h),
                    True,
                    0.0,
                    shape.bn_eps,
                )
                a = act(out).view(rows, k, h).transpose(0, 1)
        return stats
