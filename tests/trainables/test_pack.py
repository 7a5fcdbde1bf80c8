"""Fused packs: each member is the TrainingSession its config describes, only trained together.

A member must report what a TrainingSession with its config reports (to 1e-4 relative in
float32), and its numbers must not depend on which other members share the pack: a member
that diverges or is removed leaves the others bit for bit as they would have been without it.
"""

from __future__ import annotations

import dataclasses
import io
import math
from typing import Any

import pytest
import torch

from trainables import MlpConfig, TensorSplits, TrainingSession
from trainables.pack import PackSession, auto_pack_size, member_step_flops, shape_key
from trainables.train import RESULT_KEYS

BASE = {"epochs": 5, "batch_size": 64, "hidden_units": 32, "layers": 2}
"""Digits (64 features, 10 classes, 1078 training rows: 17 batches, the last of 54)."""

MEMBERS = {
    "sgd": [
        {"learning_rate": 0.05, "momentum": 0.9, "seed": 0},
        {"learning_rate": 0.1, "momentum": 0.5, "seed": 1, "weight_decay": 1e-3},
        {"learning_rate": 0.02, "momentum": 0.0, "seed": 2, "lr_decay": 0.5},
        {"learning_rate": 0.08, "momentum": 0.8, "nesterov": True, "seed": 3, "bn_momentum": 0.3},
    ],
    "adam": [
        {"learning_rate": 1e-3, "seed": 0},
        {"learning_rate": 3e-3, "beta1": 0.8, "beta2": 0.99, "seed": 1, "lr_decay": 0.3},
        {"learning_rate": 2e-3, "eps": 1e-6, "weight_decay": 1e-3, "seed": 2},
        {"learning_rate": 5e-3, "beta1": 0.95, "seed": 3, "bn_momentum": 0.05},
    ],
    "rmsprop": [
        {"learning_rate": 1e-3, "seed": 0},
        {"learning_rate": 5e-4, "beta2": 0.9, "seed": 1, "eps": 1e-6},
        {"learning_rate": 2e-3, "weight_decay": 1e-4, "seed": 2, "bn_momentum": 0.2},
        {"learning_rate": 1e-3, "beta2": 0.95, "seed": 3, "lr_decay": 0.2},
    ],
}

METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")


def _configs(optimizer: str, **extra: Any) -> list[dict[str, Any]]:
    return [{**BASE, "optimizer": optimizer, **member, **extra} for member in MEMBERS[optimizer]]


def _alone(config: dict[str, Any], data: TensorSplits) -> list[dict[str, Any]]:
    session = TrainingSession(config, data)
    results = []
    while not session.finished:
        results.append(session.step())
    return results


def _run(pack: PackSession) -> dict[int, list[dict[str, Any]]]:
    history: dict[int, list[dict[str, Any]]] = {}
    while not pack.finished:
        for member, result in pack.step().items():
            history.setdefault(member, []).append(result)
    return history


def _without_time(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in results]


def _assert_states_equal(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Two TrainingSession-format states hold the same bits."""
    assert a["epoch"] == b["epoch"] and a["diverged"] == b["diverged"]
    assert torch.equal(a["shuffle_rng_state"], b["shuffle_rng_state"])
    assert list(a["model"]) == list(b["model"])
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for index, moments in a["optimizer"]["state"].items():
        assert moments.keys() == b["optimizer"]["state"][index].keys()
        for name, value in moments.items():
            assert torch.equal(value, b["optimizer"]["state"][index][name]), (index, name)


# -- a member is its TrainingSession -------------------------------------------------------


@pytest.mark.parametrize("bn_eval", ["ewma", "population"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam", "rmsprop"])
def test_member_matches_training_session(
    optimizer: str, bn_eval: str, digits_tensors: TensorSplits
) -> None:
    configs = _configs(optimizer, bn_eval=bn_eval)
    packed = _run(PackSession(configs, digits_tensors))
    assert sorted(packed) == [0, 1, 2, 3]
    assert max(history[-1]["val_accuracy"] for history in packed.values()) > 0.9
    for member, config in enumerate(configs):
        alone = _alone(config, digits_tensors)
        assert len(packed[member]) == len(alone) == BASE["epochs"]
        for got, want in zip(packed[member], alone, strict=True):
            assert tuple(got) == RESULT_KEYS
            assert got["epoch"] == want["epoch"]
            assert got["learning_rate"] == want["learning_rate"]
            assert got["diverged"] is want["diverged"] is False
            for key in METRICS:
                assert got[key] == pytest.approx(want[key], rel=1e-4), (member, got["epoch"], key)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_member_state_is_the_sessions_bit_for_bit(
    optimizer: str, digits_tensors: TensorSplits
) -> None:
    """Stronger than the 1e-4 contract, and what the kernels give on the CPU: a member's
    weights, BN statistics, optimizer moments, shuffling state and lr are its session's bits
    (every member computation is the single network's own kernel call; only the reported
    losses are averaged in another order, within 1e-6)."""
    configs = _configs(optimizer, epochs=3)
    configs[0] = {**configs[0], "bn_eval": "population"}
    pack = PackSession(configs, digits_tensors)
    _run(pack)
    for member, config in enumerate(configs):
        session = TrainingSession(config, digits_tensors)
        while not session.finished:
            session.step()
        _assert_states_equal(pack.member_state_dict(member), session.state_dict())


def test_members_may_mix_bn_modes_and_epochs(digits_tensors: TensorSplits) -> None:
    """bn_eval, bn_momentum and epochs are per member; a member leaves at its last epoch."""
    configs = [
        {**BASE, "learning_rate": 0.05, "bn_eval": "population", "bn_momentum": 0.2, "seed": 5},
        {**BASE, "learning_rate": 0.05, "bn_eval": "ewma", "epochs": 2, "seed": 6},
        {**BASE, "learning_rate": 0.03, "bn_eval": "population", "epochs": 3, "seed": 7},
    ]
    pack = PackSession(configs, digits_tensors)
    packed = _run(pack)
    assert [len(packed[m]) for m in range(3)] == [5, 2, 3]
    for member, config in enumerate(configs):
        for got, want in zip(packed[member], _alone(config, digits_tensors), strict=True):
            for key in METRICS:
                assert got[key] == pytest.approx(want[key], rel=1e-4), (member, key)
    assert pack.live_ids == () and pack.finished
    assert all(pack.member_finished(m) for m in range(3))
    with pytest.raises(RuntimeError, match="finished"):
        pack.step()


def test_results_have_the_session_keys_and_ids(small_tensors: TensorSplits) -> None:
    configs = [{**BASE, "epochs": 2, "hidden_units": 16, "seed": s} for s in (3, 4)]
    pack = PackSession(configs, small_tensors)
    results = pack.step()
    assert list(results) == [0, 1]
    for result in results.values():
        assert tuple(result) == RESULT_KEYS
        assert isinstance(result["epoch"], int) and result["epoch"] == 1
        assert result["diverged"] is False
        for key in RESULT_KEYS:
            if key not in ("epoch", "diverged"):
                assert isinstance(result[key], float) and math.isfinite(result[key]), key
        assert result["epoch_seconds"] > 0.0


def test_validation_numbers_match_evaluate(digits_tensors: TensorSplits) -> None:
    pack = PackSession(_configs("sgd", epochs=2), digits_tensors)
    results = pack.step()
    for member, result in results.items():
        loss, accuracy = pack.evaluate(member, digits_tensors.x_val, digits_tensors.y_val)
        assert (result["val_loss"], result["val_accuracy"]) == (loss, accuracy)


def test_pack_leaves_global_rng_alone(small_tensors: TensorSplits) -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    pack = PackSession([{**BASE, "seed": 1}, {**BASE, "seed": 2}], small_tensors)
    pack.step()
    assert torch.equal(torch.get_rng_state(), before)


# -- members do not depend on each other ---------------------------------------------------


def test_divergence_masks_one_member_and_spares_the_others(digits_tensors: TensorSplits) -> None:
    good = _configs("sgd")
    bad = {**good[1], "learning_rate": 1e6}
    with_bad = PackSession([good[0], bad, good[2]], digits_tensors)
    without = PackSession([good[0], good[2]], digits_tensors)
    history = _run(with_bad)
    reference = _run(without)

    diverged = history[1]
    assert diverged[-1]["diverged"] is True
    assert math.isnan(diverged[-1]["train_loss"]) and math.isnan(diverged[-1]["val_loss"])
    assert diverged[-1]["val_accuracy"] == 0.0 and diverged[-1]["train_accuracy"] == 0.0
    assert all(r["diverged"] is False for r in diverged[:-1])
    alone = _alone(bad, digits_tensors)
    assert [r["epoch"] for r in diverged] == [r["epoch"] for r in alone]
    assert with_bad.diverged(1) and with_bad.member_finished(1)

    for member, twin in ((0, 0), (2, 1)):
        assert _without_time(history[member]) == _without_time(reference[twin])
        _assert_states_equal(with_bad.member_state_dict(member), without.member_state_dict(twin))


def test_each_member_diverges_where_its_session_does(small_tensors: TensorSplits) -> None:
    """A non-finite row reaches each member at its own batch (its own shuffle); each stops
    there, before that batch's update, with the state its TrainingSession stops with."""
    x_train = small_tensors.x_train.clone()
    x_train[5, 0] = math.nan
    poisoned = dataclasses.replace(small_tensors, x_train=x_train)
    configs = [{**BASE, "batch_size": 16, "hidden_units": 16, "seed": s} for s in range(3)]
    pack = PackSession(configs, poisoned)
    results = pack.step()
    assert pack.finished
    for member, config in enumerate(configs):
        session = TrainingSession(config, poisoned)
        want = session.step()
        assert session.diverged and results[member]["diverged"] is True
        assert _without_time([results[member]]) == _without_time([want])
        state = pack.member_state_dict(member)
        reference = session.state_dict()
        assert state["epoch"] == 1 and state["diverged"] is True
        for name, value in reference["model"].items():
            torch.testing.assert_close(
                state["model"][name], value, equal_nan=True, rtol=1e-5, atol=1e-6
            )
        for index, moments in reference["optimizer"]["state"].items():
            for name, value in moments.items():
                got = state["optimizer"]["state"][index][name]
                torch.testing.assert_close(got, value, rtol=1e-5, atol=1e-6)


def test_removing_members_keeps_survivors_bit_identical(digits_tensors: TensorSplits) -> None:
    configs = _configs("adam")
    full = PackSession(configs, digits_tensors)
    stopped = PackSession(configs, digits_tensors)
    full_history = {m: [] for m in range(4)}  # type: dict[int, list[dict[str, Any]]]
    stopped_history = {m: [] for m in range(4)}  # type: dict[int, list[dict[str, Any]]]
    for epoch in range(BASE["epochs"]):
        for member, result in full.step().items():
            full_history[member].append(result)
        for member, result in stopped.step().items():
            stopped_history[member].append(result)
        if epoch == 1:
            stopped.remove([1, 3])
            assert stopped.live_ids == (0, 2)
            assert stopped.fused.k == 2
            assert all(p.shape[0] == 2 for p in stopped.fused.params)
            assert all(s.shape[0] == 2 for entry in stopped.optimizer.state for s in entry.values())
            with pytest.raises(KeyError, match="removed"):
                stopped.member_state_dict(1)
    for member in (0, 2):
        assert _without_time(stopped_history[member]) == _without_time(full_history[member])
        _assert_states_equal(stopped.member_state_dict(member), full.member_state_dict(member))
    assert [len(stopped_history[m]) for m in (1, 3)] == [2, 2]
    assert stopped.member_ids == (0, 2)


# -- state -----------------------------------------------------------------------------------


def test_state_dict_round_trip_is_exact(digits_tensors: TensorSplits) -> None:
    configs = _configs("adam", bn_eval="population")
    configs[3] = {**configs[3], "epochs": 2}  # finished (retired) at the snapshot
    pack = PackSession(configs, digits_tensors)
    pack.step()
    pack.step()
    pack.remove([2])
    snapshot = pack.state_dict()
    expected = [_without_time(list(pack.step().values())) for _ in range(3)]

    buffer = io.BytesIO()
    torch.save(snapshot, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)

    restored = PackSession(configs, digits_tensors)
    restored.load_state_dict(loaded)
    assert restored.live_ids == (0, 1) and restored.member_ids == (0, 1, 3)
    assert [restored.epoch(m) for m in (0, 1, 3)] == [2, 2, 2]
    actual = [_without_time(list(restored.step().values())) for _ in range(3)]
    assert actual == expected
    for member in (0, 1, 3):
        _assert_states_equal(restored.member_state_dict(member), pack.member_state_dict(member))


def test_member_state_loads_into_a_training_session(digits_tensors: TensorSplits) -> None:
    configs = _configs("sgd")
    pack = PackSession(configs, digits_tensors)
    pack.step()
    pack.step()
    member = 3
    state = pack.member_state_dict(member)

    # The format is the session's own: same keys, names, shapes and optimizer layout.
    alone = TrainingSession(configs[member], digits_tensors)
    alone.step()
    alone.step()
    reference = alone.state_dict()
    assert state.keys() == reference.keys()
    assert list(state["model"]) == list(reference["model"])
    for name, value in reference["model"].items():
        assert (
            state["model"][name].shape == value.shape and state["model"][name].dtype == value.dtype
        )
        torch.testing.assert_close(state["model"][name], value, rtol=1e-4, atol=1e-6)
    assert state["optimizer"]["param_groups"] == reference["optimizer"]["param_groups"]
    assert state["optimizer"]["state"].keys() == reference["optimizer"]["state"].keys()
    assert torch.equal(state["shuffle_rng_state"], reference["shuffle_rng_state"])
    assert state["config"] == reference["config"]

    # The best model is rebuilt from the checkpoint and tested.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    scored = TrainingSession(configs[member], digits_tensors)
    scored.load_state_dict(torch.load(buffer, weights_only=True))
    test_loss, test_accuracy = scored.evaluate(digits_tensors.x_test, digits_tensors.y_test)
    packed_loss, packed_accuracy = pack.evaluate(
        member, digits_tensors.x_test, digits_tensors.y_test
    )
    assert test_accuracy == packed_accuracy
    assert test_loss == pytest.approx(packed_loss, rel=1e-6)

    # And a session resumed from it trains on as the member does.
    continued = [scored.step() for _ in range(3)]
    packed = [pack.step()[member] for _ in range(3)]
    for got, want in zip(packed, continued, strict=True):
        for key in METRICS:
            assert got[key] == pytest.approx(want[key], rel=1e-4), key


def test_session_state_loads_into_a_member(digits_tensors: TensorSplits) -> None:
    """A trial's checkpoint (PBT's exploit, a restore) goes into a pack member and trains on
    exactly as the member it was taken from."""
    configs = _configs("adam", epochs=4)
    source = PackSession(configs, digits_tensors)
    source.step()
    state = source.member_state_dict(2)
    target = PackSession(configs, digits_tensors)
    target.step()
    target.step()
    target.load_member_states({2: state})
    assert target.epoch(2) == 1 and target.epoch(0) == 2
    source_history = _run(source)
    target_history = _run(target)
    assert _without_time(target_history[2]) == _without_time(source_history[2])
    _assert_states_equal(target.member_state_dict(2), source.member_state_dict(2))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_member_copies_another_with_new_values(
    optimizer: str, digits_tensors: TensorSplits
) -> None:
    """Population-based training's copy inside a pack: member 0 takes member 1's state with
    member 1's config and new values (a perturbed learning rate, weight decay and lr decay);
    from then on it trains bit for bit as a lone session of that config loaded from member
    1's state, and the other members are untouched."""
    configs = _configs(optimizer, epochs=4)
    pack = PackSession(configs, digits_tensors)
    pack.step()
    donor = pack.member_state_dict(1)
    new = {**configs[1], "learning_rate": configs[1]["learning_rate"] * 1.25}
    new.update(weight_decay=2e-3, lr_decay=0.2)
    pack.load_member_states({0: donor}, configs={0: new})
    alone = TrainingSession(new, digits_tensors)
    alone.load_state_dict(donor)
    while not alone.finished:
        alone.step()
    untouched = TrainingSession(configs[2], digits_tensors)
    while not untouched.finished:
        untouched.step()
    _run(pack)
    _assert_states_equal(pack.member_state_dict(0), alone.state_dict())
    _assert_states_equal(pack.member_state_dict(2), untouched.state_dict())
    with pytest.raises(ValueError, match="another shape"):
        pack.load_member_states({0: donor}, configs={0: {**new, "hidden_units": 16}})


def test_evaluate_a_retired_member(small_tensors: TensorSplits) -> None:
    configs = [{**BASE, "hidden_units": 16, "epochs": e, "seed": e} for e in (1, 3)]
    pack = PackSession(configs, small_tensors)
    pack.step()
    assert pack.live_ids == (1,)
    session = TrainingSession(configs[0], small_tensors)
    session.load_state_dict(pack.member_state_dict(0))
    got = pack.evaluate(0, small_tensors.x_test, small_tensors.y_test)
    want = session.evaluate(small_tensors.x_test, small_tensors.y_test)
    assert got == pytest.approx(want, rel=1e-6)
    pack.remove([0])
    with pytest.raises(KeyError):
        pack.evaluate(0, small_tensors.x_test, small_tensors.y_test)


# -- which configs pack together -------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("layers", 3),
        ("hidden_units", 48),
        ("activation", "tanh"),
        ("batch_norm", False),
        ("optimizer", "adam"),
        ("batch_size", 32),
    ],
)
def test_mixed_shapes_are_refused_naming_the_field(
    field: str, value: Any, small_tensors: TensorSplits
) -> None:
    configs = [{**BASE}, {**BASE, field: value}]
    assert shape_key(configs[0]) != shape_key(configs[1])
    with pytest.raises(ValueError, match=rf"share {field}: .*member 1 has {field}="):
        PackSession(configs, small_tensors)


def test_shape_key_ignores_per_member_fields() -> None:
    a = MlpConfig(**BASE)
    b = MlpConfig(
        **{**BASE, "epochs": 2},
        learning_rate=0.3,
        momentum=0.1,
        seed=9,
        bn_momentum=0.5,
        bn_eval="population",
        weight_decay=0.1,
        lr_decay=1.0,
        nesterov=True,
    )
    assert shape_key(a) == shape_key(b)
    hash(shape_key(a))
    # Without hidden layers the hidden-layer fields change nothing.
    assert shape_key({"layers": 0, "hidden_units": 8}) == shape_key(
        {"layers": 0, "hidden_units": 99, "activation": "tanh", "batch_norm": False}
    )


def test_softmax_regression_and_no_batch_norm_pack(small_tensors: TensorSplits) -> None:
    for extra in ({"layers": 0, "batch_size": 16}, {"batch_norm": False, "hidden_units": 16}):
        configs = [
            {**BASE, "epochs": 2, **extra, "seed": s, "learning_rate": lr}
            for s, lr in ((0, 0.05), (1, 0.1))
        ]
        packed = _run(PackSession(configs, small_tensors))
        for member, config in enumerate(configs):
            for got, want in zip(packed[member], _alone(config, small_tensors), strict=True):
                for key in METRICS:
                    assert got[key] == pytest.approx(want[key], rel=1e-4), (extra, key)


# -- pack size -------------------------------------------------------------------------------


def test_auto_pack_size() -> None:
    small = {"layers": 2, "hidden_units": 128, "batch_size": 64}
    big = {"layers": 3, "hidden_units": 256, "batch_size": 64}
    assert member_step_flops(small, n_features=64, n_classes=10) == 6 * 64 * (
        64 * 128 + 128 * 128 + 128 * 10
    )
    k = auto_pack_size(small, "cpu", 100)
    assert k > 1 and k & (k - 1) == 0
    assert auto_pack_size(big, "cpu", 100) == 1
    assert auto_pack_size(small, "cpu", 3) == 2  # never more than the configs waiting
    assert auto_pack_size(small, "cpu", 1) == 1
    assert auto_pack_size(big, "cuda", 100) > 1
    assert auto_pack_size(small, "cuda", 1000) >= k
    with pytest.raises(ValueError):
        auto_pack_size(small, "cpu", 0)
