"""Softmax cross-entropy: the gradient the network's training relies on."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F


def _logits_and_labels(rows: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, classes, generator=generator, dtype=torch.float64) * 4.0
    labels = torch.randint(0, classes, (rows,), generator=generator)
    return logits.requires_grad_(True), labels


@pytest.mark.parametrize("classes", [2, 3, 10, 37])
def test_sum_reduction_gradient_is_softmax_minus_onehot(classes: int) -> None:
    """The course's dz = y_hat - y, per example."""
    z, y = _logits_and_labels(rows=25, classes=classes, seed=classes)
    F.cross_entropy(z, y, reduction="sum").backward()
    assert z.grad is not None
    expected = torch.softmax(z.detach(), dim=1) - F.one_hot(y, classes).to(torch.float64)
    torch.testing.assert_close(z.grad, expected, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("classes", [2, 5, 10])
def test_mean_reduction_gradient_is_softmax_minus_onehot_over_m(classes: int) -> None:
    """F.cross_entropy averages over the batch, so dz carries a 1/m factor."""
    rows = 16
    z, y = _logits_and_labels(rows=rows, classes=classes, seed=100 + classes)
    F.cross_entropy(z, y).backward()
    assert z.grad is not None
    expected = torch.softmax(z.detach(), dim=1) - F.one_hot(y, classes).to(torch.float64)
    torch.testing.assert_close(z.grad * rows, expected, atol=1e-12, rtol=1e-10)


def test_cross_entropy_is_negative_log_softmax_of_true_class() -> None:
    z, y = _logits_and_labels(rows=12, classes=6, seed=7)
    probabilities = torch.exp(z.detach()) / torch.exp(z.detach()).sum(dim=1, keepdim=True)
    expected = -torch.log(probabilities[torch.arange(12), y]).mean()
    torch.testing.assert_close(F.cross_entropy(z.detach(), y), expected)


def test_gradient_rows_sum_to_zero() -> None:
    """Softmax is shift-invariant, so dz has no component along the all-ones direction."""
    z, y = _logits_and_labels(rows=20, classes=4, seed=9)
    F.cross_entropy(z, y, reduction="sum").backward()
    assert z.grad is not None
    torch.testing.assert_close(z.grad.sum(dim=1), torch.zeros(20, dtype=torch.float64))
