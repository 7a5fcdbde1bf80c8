"""The batch-normalized softmax network and its population-statistics pass.

The network is the course's deep softmax classifier: each hidden layer is
z = W a (no bias), BN(z) = gamma * (z - mu) / sqrt(var + eps) + beta, then an
activation; the output layer gives logits and the softmax lives in the loss.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ACTIVATIONS", "BnSoftmaxMLP", "recompute_population_statistics"]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


class BnSoftmaxMLP(nn.Module):
    """Fully connected classifier with BatchNorm between each Linear and its activation.

    Layout: ``hidden`` is an ``nn.Sequential`` of per-layer blocks
    ``Sequential(Linear(bias=False), BatchNorm1d, activation)`` so a test or a
    report can index ``model.hidden[i][0]`` for layer i's weights; ``output``
    is the final Linear producing raw logits (F.cross_entropy applies the
    softmax, which is numerically safer than softmax followed by log).

    The hidden Linears have no bias because BN subtracts the batch mean right
    after them, which cancels any constant; BN's learnable beta takes the
    bias's role. ``batch_norm=False`` restores the bias and drops BN, so an
    ablation differs from the BN net only by normalization.
    """

    def __init__(
        self,
        n_features: int,
        n_classes: int,
        *,
        hidden_units: int,
        layers: int,
        activation: str = "relu",
        batch_norm: bool = True,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        if n_features < 1:
            raise ValueError(f"n_features must be >= 1, got {n_features}")
        if n_classes < 2:
            raise ValueError(f"n_classes must be >= 2, got {n_classes}")
        if hidden_units < 1:
            raise ValueError(f"hidden_units must be >= 1, got {hidden_units}")
        if layers < 0:
            raise ValueError(f"layers must be >= 0 (0 = softmax regression), got {layers}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; valid: {', '.join(ACTIVATIONS)}")
        if not 0.0 < bn_momentum <= 1.0:
            raise ValueError(f"bn_momentum must be in (0, 1], got {bn_momentum}")

        self.n_features = n_features
        self.n_classes = n_classes
        self.batch_norm = batch_norm
        blocks: list[nn.Module] = []
        width = n_features
        for _ in range(layers):
            if batch_norm:
                block = nn.Sequential(
                    nn.Linear(width, hidden_units, bias=False),
                    nn.BatchNorm1d(hidden_units, momentum=bn_momentum),
                    ACTIVATIONS[activation](),
                )
            else:
                block = nn.Sequential(
                    nn.Linear(width, hidden_units, bias=True),
                    ACTIVATIONS[activation](),
                )
            blocks.append(block)
            width = hidden_units
        self.hidden = nn.Sequential(*blocks)
        self.output = nn.Linear(width, n_classes, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw logits, shape (batch, n_classes)."""
        return self.output(self.hidden(x))


def recompute_population_statistics(model: nn.Module, x: torch.Tensor) -> None:
    """Set every BatchNorm's running stats to the exact mean/variance of its
    input over all of ``x`` (the ``bn_eval: population`` mode).

    Why: the running EWMA mixes statistics from earlier, different weights;
    after training the course recommends estimating mu and sigma^2 once with
    the final weights over the whole training set. One full-batch pass with
    BN in train mode does exactly that: each BN then normalizes with the
    full-set statistics, so every later BN sees precisely the input it will
    see in eval mode with population stats. The captured biased variance is
    what train mode normalizes with, so afterwards eval(x) == train(x as one
    batch). Other modules (e.g. dropout) stay in eval mode during the pass,
    and ``num_batches_tracked`` is restored so the pass leaves no trace
    besides the new statistics.
    """
    batch_norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not batch_norms:
        return
    if x.shape[0] < 2:
        raise ValueError(f"population statistics need at least 2 rows, got {x.shape[0]}")

    captured: dict[nn.Module, torch.Tensor] = {}

    def capture(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        captured[module] = inputs[0]

    training_flags = {m: m.training for m in model.modules()}
    batches_tracked = {
        bn: bn.num_batches_tracked.clone()
        for bn in batch_norms
        if bn.num_batches_tracked is not None
    }
    handles = [bn.register_forward_pre_hook(capture) for bn in batch_norms]
    try:
        model.eval()
        for bn in batch_norms:
            bn.train()
        with torch.no_grad():
            model(x)
            for bn in batch_norms:
                z = captured[bn]
                # BatchNorm1d accepts (N, C) or (N, C, L); reduce over all but C.
                dims = [0] + list(range(2, z.dim()))
                var, mean = torch.var_mean(z, dim=dims, unbiased=False)
                if bn.running_mean is not None and bn.running_var is not None:
                    bn.running_mean.copy_(mean.to(bn.running_mean.dtype))
                    bn.running_var.copy_(var.to(bn.running_var.dtype))
                if bn in batches_tracked and bn.num_batches_tracked is not None:
                    bn.num_batches_tracked.copy_(batches_tracked[bn])
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in training_flags.items():
            module.training = flag
