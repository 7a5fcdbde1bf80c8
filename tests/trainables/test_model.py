"""BnSoftmaxMLP structure and batch-normalization semantics."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from torch import nn

from trainables import BnSoftmaxMLP, recompute_population_statistics


def _make(**overrides: object) -> BnSoftmaxMLP:
    kwargs: dict[str, object] = {"hidden_units": 16, "layers": 3, "activation": "relu"}
    kwargs.update(overrides)
    torch.manual_seed(0)
    return BnSoftmaxMLP(7, 4, **kwargs)  # type: ignore[arg-type]


def _batch_norms(model: nn.Module) -> list[nn.BatchNorm1d]:
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]


@contextmanager
def _capture_bn_io(
    model: nn.Module,
) -> Iterator[dict[nn.Module, tuple[torch.Tensor, torch.Tensor]]]:
    """Record (input, output) of every BatchNorm during the block."""
    seen: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        seen[module] = (inputs[0].detach().clone(), output.detach().clone())

    handles = [bn.register_forward_hook(hook) for bn in _batch_norms(model)]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def _perturb_affine(model: nn.Module, seed: int) -> None:
    """Non-trivial gamma/beta so tests do not pass only because BN is identity-like."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in _batch_norms(model):
            bn.weight.copy_(torch.rand(bn.num_features, generator=generator) + 0.5)
            bn.bias.copy_(torch.randn(bn.num_features, generator=generator))


def _inputs(rows: int = 64, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, 7, generator=generator) * 3.0 + 2.0


def test_structure_with_batch_norm() -> None:
    model = _make(layers=3, activation="tanh")
    assert len(model.hidden) == 3
    for block in model.hidden:
        linear, bn, activation = block
        assert isinstance(linear, nn.Linear) and linear.bias is None
        assert isinstance(bn, nn.BatchNorm1d) and bn.affine
        assert isinstance(activation, nn.Tanh)
    assert isinstance(model.output, nn.Linear) and model.output.bias is not None
    assert model(_inputs()).shape == (64, 4)


def test_no_linear_before_a_batch_norm_has_a_bias() -> None:
    model = _make(layers=4)
    modules = list(model.modules())
    for before, after in zip(modules, modules[1:], strict=False):
        if isinstance(after, nn.BatchNorm1d):
            assert isinstance(before, nn.Linear)
            assert before.bias is None


def test_without_batch_norm_linears_have_biases_and_no_bn() -> None:
    model = _make(batch_norm=False, activation="sigmoid")
    assert not _batch_norms(model)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 4
    assert all(linear.bias is not None for linear in linears)
    assert isinstance(model.hidden[0][1], nn.Sigmoid)


def test_zero_layers_is_softmax_regression() -> None:
    model = _make(layers=0)
    assert len(model.hidden) == 0
    assert [type(m) for m in model.modules() if not isinstance(m, nn.Sequential)] == [
        BnSoftmaxMLP,
        nn.Linear,
    ]
    assert model.output.in_features == 7


def test_bn_momentum_is_passed_through() -> None:
    model = _make(bn_momentum=0.25)
    assert all(bn.momentum == 0.25 for bn in _batch_norms(model))


@pytest.mark.parametrize(
    "overrides",
    [
        {"activation": "gelu"},
        {"layers": -1},
        {"hidden_units": 0},
        {"bn_momentum": 0.0},
        {"bn_momentum": 1.5},
    ],
)
def test_invalid_arguments_raise(overrides: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        _make(**overrides)


def test_train_mode_normalizes_each_feature_to_zero_mean_unit_variance() -> None:
    model = _make()
    _perturb_affine(model, seed=2)
    model.train()
    with _capture_bn_io(model) as seen:
        model(_inputs())
    assert len(seen) == 3
    for bn, (z, out) in seen.items():
        mean = z.mean(dim=0)
        var = z.var(dim=0, unbiased=False)
        z_hat = (z - mean) / torch.sqrt(var + bn.eps)
        torch.testing.assert_close(z_hat.mean(dim=0), torch.zeros(16), atol=1e-5, rtol=0)
        # Unit variance up to eps's shrinkage; variance of z here is >> eps.
        torch.testing.assert_close(
            z_hat.var(dim=0, unbiased=False), torch.ones(16), atol=1e-3, rtol=0
        )
        # BN's output is gamma * z_hat + beta: recovering z_hat from it checks
        # that BN normalizes with the batch's own (biased) statistics.
        recovered = (out - bn.bias) / bn.weight
        torch.testing.assert_close(recovered, z_hat, atol=1e-4, rtol=1e-4)


def test_identity_affine_output_has_zero_mean_unit_variance() -> None:
    model = _make()
    model.train()
    with torch.no_grad():
        for bn in _batch_norms(model):
            bn.weight.fill_(1.0)
            bn.bias.fill_(0.0)
    with _capture_bn_io(model) as seen:
        model(_inputs(rows=128, seed=5))
    for _, out in seen.values():
        torch.testing.assert_close(out.mean(dim=0), torch.zeros(16), atol=1e-5, rtol=0)
        torch.testing.assert_close(
            out.var(dim=0, unbiased=False), torch.ones(16), atol=1e-3, rtol=0
        )


def test_eval_mode_uses_running_statistics() -> None:
    model = _make()
    _perturb_affine(model, seed=3)
    model.train()
    with torch.no_grad():
        for seed in range(5):  # move the running stats away from their (0, 1) init
            model(_inputs(seed=10 + seed))
    model.eval()
    with _capture_bn_io(model) as seen, torch.no_grad():
        model(_inputs(rows=9, seed=20))
    for bn, (z, out) in seen.items():
        assert not torch.allclose(bn.running_mean, torch.zeros(16))
        expected = (z - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_eval_output_does_not_depend_on_batch_composition() -> None:
    model = _make()
    _perturb_affine(model, seed=4)
    model.eval()
    x = _inputs(rows=30, seed=6)
    with torch.no_grad():
        whole = model(x)
        pieces = torch.cat([model(x[:1]), model(x[1:17]), model(x[17:])])
    torch.testing.assert_close(whole, pieces, atol=1e-5, rtol=1e-5)


def test_population_statistics_equal_full_pass_statistics() -> None:
    model = _make()
    _perturb_affine(model, seed=5)
    x = _inputs(rows=200, seed=7)
    model.train()
    with _capture_bn_io(model) as seen, torch.no_grad():
        model(x)  # full batch in train mode: each BN sees the population input
    recompute_population_statistics(model, x)
    for bn, (z, _) in seen.items():
        torch.testing.assert_close(bn.running_mean, z.mean(dim=0), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            bn.running_var, z.var(dim=0, unbiased=False), atol=1e-5, rtol=1e-5
        )


def test_population_statistics_make_eval_equal_full_batch_train() -> None:
    model = _make(activation="tanh")
    _perturb_affine(model, seed=6)
    x = _inputs(rows=150, seed=8)
    recompute_population_statistics(model, x)
    with torch.no_grad():
        model.eval()
        eval_out = model(x)
        model.train()
        train_out = model(x)
    torch.testing.assert_close(eval_out, train_out, atol=1e-5, rtol=1e-5)


def test_population_statistics_differ_from_ewma() -> None:
    """Guards the test above: after EWMA updates eval and train outputs differ."""
    model = _make()
    _perturb_affine(model, seed=7)
    x = _inputs(rows=150, seed=9)
    model.train()
    with torch.no_grad():
        model(x)
        model.eval()
        eval_out = model(x)
        model.train()
        train_out = model(x)
    assert (eval_out - train_out).abs().max() > 1e-2


def test_population_pass_restores_flags_and_counters() -> None:
    model = _make()
    x = _inputs(rows=50)
    model.eval()
    counters = [int(bn.num_batches_tracked) for bn in _batch_norms(model)]
    momenta = [bn.momentum for bn in _batch_norms(model)]
    weights = [p.detach().clone() for p in model.parameters()]
    recompute_population_statistics(model, x)
    assert not any(m.training for m in model.modules())
    assert [int(bn.num_batches_tracked) for bn in _batch_norms(model)] == counters
    assert [bn.momentum for bn in _batch_norms(model)] == momenta
    for before, after in zip(weights, model.parameters(), strict=True):
        torch.testing.assert_close(before, after, atol=0, rtol=0)
    model.train()
    recompute_population_statistics(model, x)
    assert all(m.training for m in model.modules())
    assert not any(bn._forward_pre_hooks for bn in _batch_norms(model))


def test_population_keeps_dropout_off() -> None:
    """Only BN switches to train mode; a dropout layer must not perturb the stats."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(7, 12, bias=False), nn.Dropout(p=0.5), nn.BatchNorm1d(12))
    x = _inputs(rows=64)
    recompute_population_statistics(model, x)
    z = model[0](x).detach()
    torch.testing.assert_close(model[2].running_mean, z.mean(dim=0), atol=1e-5, rtol=1e-5)


def test_population_without_batch_norm_is_a_no_op() -> None:
    model = _make(batch_norm=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    recompute_population_statistics(model, _inputs(rows=1))
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], atol=0, rtol=0)


def test_population_needs_two_rows() -> None:
    with pytest.raises(ValueError, match="at least 2 rows"):
        recompute_population_statistics(_make(), _inputs(rows=1))
