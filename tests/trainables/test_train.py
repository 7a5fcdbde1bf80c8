"""The trial loop: metrics, divergence, determinism, exact resume, optimizers."""

from __future__ import annotations

import dataclasses
import io
import math
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from trainables import MlpConfig, TensorSplits, TrainingSession, fit, learning_rate_at
from trainables.train import RESULT_KEYS, build_optimizer

FAST = {"epochs": 3, "batch_size": 32, "hidden_units": 16, "learning_rate": 0.05}


def _without_time(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k != "epoch_seconds"}


def _run(config: dict[str, Any], data: TensorSplits) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    fit(config, data, results.append)
    return results


def test_fit_on_digits_learns(digits_tensors: TensorSplits) -> None:
    results: list[dict[str, Any]] = []
    session = fit(
        {"epochs": 10, "batch_size": 64, "learning_rate": 0.1, "optimizer": "sgd"},
        digits_tensors,
        results.append,
    )
    assert len(results) == 10
    assert [r["epoch"] for r in results] == list(range(1, 11))
    assert results[-1]["val_accuracy"] >= 0.9
    assert results[-1]["train_loss"] < results[0]["train_loss"]
    assert session.finished and not session.diverged and session.epoch == 10
    _, test_accuracy = session.evaluate(digits_tensors.x_test, digits_tensors.y_test)
    assert test_accuracy >= 0.9


def test_result_has_exact_keys_and_types(small_tensors: TensorSplits) -> None:
    results = _run(FAST, small_tensors)
    assert len(results) == FAST["epochs"]
    for result in results:
        assert tuple(result) == RESULT_KEYS
        assert isinstance(result["epoch"], int)
        assert isinstance(result["diverged"], bool) and result["diverged"] is False
        for key in RESULT_KEYS:
            if key not in ("epoch", "diverged"):
                assert isinstance(result[key], float), key
                assert math.isfinite(result[key]), key
        assert 0.0 <= result["train_accuracy"] <= 1.0
        assert 0.0 <= result["val_accuracy"] <= 1.0
        assert result["epoch_seconds"] > 0.0


def test_val_metrics_match_evaluate(small_tensors: TensorSplits) -> None:
    session = TrainingSession(FAST, small_tensors)
    result = session.step()
    val_loss, val_accuracy = session.evaluate(small_tensors.x_val, small_tensors.y_val)
    assert result["val_loss"] == val_loss
    assert result["val_accuracy"] == val_accuracy


def test_huge_learning_rate_diverges_early(digits_tensors: TensorSplits) -> None:
    results: list[dict[str, Any]] = []
    session = fit({"learning_rate": 1e6, "epochs": 10}, digits_tensors, results.append)
    assert session.diverged and session.finished
    assert len(results) < 10
    last = results[-1]
    assert last["diverged"] is True
    assert math.isnan(last["train_loss"]) and math.isnan(last["val_loss"])
    assert last["val_accuracy"] == 0.0
    assert all(r["diverged"] is False for r in results[:-1])


def test_non_finite_data_diverges_in_first_epoch(small_tensors: TensorSplits) -> None:
    x_train = small_tensors.x_train.clone()
    x_train[0, 0] = math.nan
    poisoned = dataclasses.replace(small_tensors, x_train=x_train)
    results = _run({**FAST, "batch_size": 512}, poisoned)
    assert len(results) == 1
    assert results[0]["diverged"] is True and results[0]["epoch"] == 1


def test_non_finite_validation_loss_counts_as_divergence(small_tensors: TensorSplits) -> None:
    """Weights can overflow on an epoch's last update while every training loss
    was finite; the validation pass must then flag the trial as diverged."""
    x_val = small_tensors.x_val.clone()
    x_val[0, 0] = math.inf
    poisoned = dataclasses.replace(small_tensors, x_val=x_val)
    results = _run(FAST, poisoned)
    assert len(results) == 1
    assert results[0]["diverged"] is True
    assert math.isnan(results[0]["val_loss"]) and results[0]["val_accuracy"] == 0.0


def test_step_after_finish_raises(small_tensors: TensorSplits) -> None:
    session = fit({**FAST, "epochs": 1}, small_tensors, lambda _: None)
    with pytest.raises(RuntimeError, match="finished"):
        session.step()


def test_step_after_divergence_raises(digits_tensors: TensorSplits) -> None:
    session = fit({"learning_rate": 1e6, "epochs": 10}, digits_tensors, lambda _: None)
    with pytest.raises(RuntimeError, match="diverged"):
        session.step()


def test_same_config_and_data_give_identical_metrics(small_tensors: TensorSplits) -> None:
    first = [_without_time(r) for r in _run(FAST, small_tensors)]
    second = [_without_time(r) for r in _run(FAST, small_tensors)]
    assert first == second


def test_different_seed_gives_different_metrics(small_tensors: TensorSplits) -> None:
    first = [_without_time(r) for r in _run(FAST, small_tensors)]
    other = [_without_time(r) for r in _run({**FAST, "seed": 1}, small_tensors)]
    assert first != other


def test_session_leaves_global_rng_alone(small_tensors: TensorSplits) -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    session = TrainingSession(FAST, small_tensors)
    session.step()
    assert torch.equal(torch.get_rng_state(), before)


def test_init_does_not_depend_on_global_seed(small_tensors: TensorSplits) -> None:
    torch.manual_seed(1)
    a = TrainingSession(FAST, small_tensors)
    torch.manual_seed(2)
    b = TrainingSession(FAST, small_tensors)
    for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_resume_from_state_dict_is_exact(small_tensors: TensorSplits) -> None:
    config = {**FAST, "epochs": 4, "optimizer": "adam", "learning_rate": 0.01, "lr_decay": 0.5}
    uninterrupted = TrainingSession(config, small_tensors)
    uninterrupted.step()
    uninterrupted.step()
    snapshot = uninterrupted.state_dict()
    expected = [_without_time(uninterrupted.step()) for _ in range(2)]

    # Round-trip through bytes the way a checkpoint would, with the safe loader.
    buffer = io.BytesIO()
    torch.save(snapshot, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)

    resumed = TrainingSession(config, small_tensors)
    resumed.load_state_dict(loaded)
    assert resumed.epoch == 2
    actual = [_without_time(resumed.step()) for _ in range(2)]
    assert actual == expected
    assert resumed.finished


def test_resume_is_exact_when_the_optimizer_already_exists(small_tensors: TensorSplits) -> None:
    """Loading into a session that has trained (its optimizer built) replaces its moments."""
    config = {**FAST, "epochs": 4, "optimizer": "adam", "learning_rate": 0.01}
    uninterrupted = TrainingSession(config, small_tensors)
    uninterrupted.step()
    snapshot = uninterrupted.state_dict()
    expected = [_without_time(uninterrupted.step()) for _ in range(3)]
    used = TrainingSession(config, small_tensors)
    used.step()
    used.step()
    used.load_state_dict(snapshot)
    assert [_without_time(used.step()) for _ in range(3)] == expected


def test_evaluating_a_checkpoint_builds_no_optimizer(small_tensors: TensorSplits) -> None:
    """The best model's test loads a checkpoint and evaluates: no optimizer (and none of the
    compiler-stack import its first construction costs), and the state it was given survives
    a save untouched."""
    trained = TrainingSession({**FAST, "optimizer": "adam"}, small_tensors)
    trained.step()
    snapshot = trained.state_dict()
    scored = TrainingSession({**FAST, "optimizer": "adam"}, small_tensors)
    scored.load_state_dict(snapshot)
    assert scored.evaluate(small_tensors.x_val, small_tensors.y_val) == trained.evaluate(
        small_tensors.x_val, small_tensors.y_val
    )
    assert scored._optimizer is None
    saved = scored.state_dict()["optimizer"]
    assert saved["param_groups"] == snapshot["optimizer"]["param_groups"]
    for key, moments in snapshot["optimizer"]["state"].items():
        for name, value in moments.items():
            assert torch.equal(saved["state"][key][name], value), (key, name)


def test_state_dict_is_a_snapshot(small_tensors: TensorSplits) -> None:
    session = TrainingSession(FAST, small_tensors)
    session.step()
    snapshot = session.state_dict()
    weights = {k: v.clone() for k, v in snapshot["model"].items()}
    session.step()
    for key, value in snapshot["model"].items():
        assert torch.equal(value, weights[key]), key
    assert snapshot["epoch"] == 1


def test_resume_with_changed_config_uses_new_hyperparameters(small_tensors: TensorSplits) -> None:
    session = TrainingSession({**FAST, "momentum": 0.9}, small_tensors)
    session.step()
    snapshot = session.state_dict()
    perturbed = TrainingSession({**FAST, "momentum": 0.5}, small_tensors)
    perturbed.load_state_dict(snapshot)
    assert perturbed.optimizer.param_groups[0]["momentum"] == 0.5
    assert perturbed.optimizer.state  # the momentum buffers did come back


def test_load_state_dict_rejects_incomplete_state(small_tensors: TensorSplits) -> None:
    session = TrainingSession(FAST, small_tensors)
    with pytest.raises(KeyError, match="shuffle_rng_state"):
        session.load_state_dict({"model": {}, "optimizer": {}, "epoch": 0, "diverged": False})


def test_learning_rate_at_matches_formula() -> None:
    config = MlpConfig(learning_rate=0.2, lr_decay=0.5)
    for epoch in range(6):
        assert learning_rate_at(config, epoch) == pytest.approx(0.2 / (1 + 0.5 * epoch))
    assert learning_rate_at(MlpConfig(learning_rate=0.3), 9) == 0.3
    with pytest.raises(ValueError):
        learning_rate_at(config, -1)


def test_reported_learning_rate_follows_decay(small_tensors: TensorSplits) -> None:
    config = {**FAST, "epochs": 4, "learning_rate": 0.1, "lr_decay": 1.0}
    results = _run(config, small_tensors)
    assert [r["learning_rate"] for r in results] == pytest.approx([0.1, 0.05, 0.1 / 3, 0.025])


@pytest.mark.parametrize(
    ("values", "optimizer_type", "expected"),
    [
        (
            {"optimizer": "sgd", "momentum": 0.8, "nesterov": True, "weight_decay": 1e-3},
            torch.optim.SGD,
            {"momentum": 0.8, "nesterov": True, "weight_decay": 1e-3},
        ),
        (
            {"optimizer": "adam", "beta1": 0.85, "beta2": 0.99, "eps": 1e-6},
            torch.optim.Adam,
            {"betas": (0.85, 0.99), "eps": 1e-6},
        ),
        (
            {"optimizer": "rmsprop", "beta2": 0.95, "eps": 1e-7, "momentum": 0.9},
            torch.optim.RMSprop,
            {"alpha": 0.95, "eps": 1e-7, "momentum": 0.0},
        ),
    ],
)
def test_each_optimizer_builds_and_trains(
    values: dict[str, Any],
    optimizer_type: type[torch.optim.Optimizer],
    expected: dict[str, Any],
    small_tensors: TensorSplits,
) -> None:
    config = MlpConfig.model_validate({**FAST, "learning_rate": 0.01, **values})
    optimizer = build_optimizer(config, [torch.nn.Parameter(torch.zeros(2))])
    assert isinstance(optimizer, optimizer_type)
    group = optimizer.param_groups[0]
    assert group["lr"] == 0.01
    for key, value in expected.items():
        assert group[key] == value, key

    session = TrainingSession(config, small_tensors)
    before = [p.detach().clone() for p in session.model.parameters()]
    result = session.step()
    assert not result["diverged"] and math.isfinite(result["train_loss"])
    changed = [
        not torch.equal(b, p) for b, p in zip(before, session.model.parameters(), strict=True)
    ]
    assert all(changed)


@pytest.mark.parametrize("bn_eval", ["ewma", "population"])
def test_bn_eval_modes_run(bn_eval: str, small_tensors: TensorSplits) -> None:
    results = _run({**FAST, "bn_eval": bn_eval}, small_tensors)
    assert len(results) == FAST["epochs"]
    assert results[-1]["val_accuracy"] > 0.7


def test_population_mode_sets_training_set_statistics(small_tensors: TensorSplits) -> None:
    session = TrainingSession({**FAST, "bn_eval": "population", "layers": 1}, small_tensors)
    session.step()
    linear, bn, _ = session.model.hidden[0]
    with torch.no_grad():
        z = linear(small_tensors.x_train)
    torch.testing.assert_close(bn.running_mean, z.mean(dim=0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bn.running_var, z.var(dim=0, unbiased=False), atol=1e-5, rtol=1e-5)


def test_ewma_mode_keeps_running_average(small_tensors: TensorSplits) -> None:
    session = TrainingSession({**FAST, "bn_eval": "ewma", "layers": 1}, small_tensors)
    session.step()
    linear, bn, _ = session.model.hidden[0]
    with torch.no_grad():
        z = linear(small_tensors.x_train)
    assert not torch.allclose(bn.running_var, z.var(dim=0, unbiased=False), atol=1e-4)


def test_trailing_batch_of_one_row_is_dropped(small_tensors: TensorSplits) -> None:
    n_train = int(small_tensors.x_train.shape[0])
    # One full batch plus a single leftover row, which BatchNorm could not train on.
    config = {**FAST, "batch_size": n_train - 1, "optimizer": "adam"}
    session = TrainingSession(config, small_tensors)
    result = session.step()
    assert not result["diverged"] and math.isfinite(result["train_loss"])
    # Adam counts its updates: one per epoch, for the full batch; none for the leftover row.
    steps = {int(state["step"]) for state in session.optimizer.state.values()}
    assert steps == {1}


def test_batch_larger_than_training_set(small_tensors: TensorSplits) -> None:
    results = _run({**FAST, "batch_size": 10_000}, small_tensors)
    assert all(math.isfinite(r["train_loss"]) for r in results)


def test_without_batch_norm_and_zero_layers_train(small_tensors: TensorSplits) -> None:
    for extra in ({"batch_norm": False}, {"layers": 0, "batch_size": 1}):
        results = _run({**FAST, **extra}, small_tensors)
        assert results[-1]["val_accuracy"] > 0.7, extra


def test_evaluate_restores_training_mode(small_tensors: TensorSplits) -> None:
    session = TrainingSession(FAST, small_tensors)
    session.model.train()
    session.evaluate(small_tensors.x_val, small_tensors.y_val)
    assert session.model.training
    session.model.eval()
    session.evaluate(small_tensors.x_val, small_tensors.y_val)
    assert not session.model.training


def test_invalid_config_mapping_raises(small_tensors: TensorSplits) -> None:
    with pytest.raises(ValidationError):
        TrainingSession({"learning_rate": -1.0}, small_tensors)


def test_accepts_a_config_object(small_tensors: TensorSplits) -> None:
    config = MlpConfig(**FAST)
    session = TrainingSession(config, small_tensors)
    assert session.config is config


def test_tensor_splits_from_splits(digits_splits: Any) -> None:
    tensors = TensorSplits.from_splits(digits_splits, "cpu")
    assert tensors.x_train.dtype == torch.float32
    assert tensors.y_train.dtype == torch.int64
    assert tensors.n_features == 64 and tensors.n_classes == 10
    assert tensors.x_val.shape[0] == digits_splits.sizes()["val"]
    assert tensors.to("cpu") is tensors
