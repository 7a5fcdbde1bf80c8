"""Fused packs in the searcher: grouping by shape, unchanged marginals, resume of packs.

No Ray or MLflow: the searcher and the packer are plain Python (Tune's side is played here).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from scipy.stats import ks_2samp

from orchestrator.engine.packs import PACKS_PER_SLOT, packer_for
from orchestrator.engine.search_setup import round_plan
from orchestrator.engine.searcher import RoundSearcher
from orchestrator.search.packing import Packer, pack_round
from orchestrator.search.space import sample_configs
from orchestrator.spec import SweepSpec, parse_spec
from orchestrator.store.journal import RESUME_FROM
from orchestrator.trials import PACK_MEMBERS, TrialState
from trainables import get_trainable
from trainables.pack import auto_pack_size

SHAPES = ("layers", "hidden_units", "activation", "batch_norm", "optimizer", "batch_size")


def _spec(pack_size: Any = "auto", strategy: str = "random", **extra: Any) -> SweepSpec:
    space: dict[str, Any] = {
        "learning_rate": {"scale": "log", "low": 1e-3, "high": 1.0},
        "momentum": {"scale": "log1m", "low": 0.8, "high": 0.999},
        "hidden_units": {"scale": "log", "low": 16, "high": 256, "integer": True},
        "layers": {"values": [1, 2, 3]},
        "batch_size": {"values": [32, 64, 128]},
    }
    search: dict[str, Any] = {"strategy": strategy, "num_trials": 64, "seed": 3}
    if strategy == "grid":
        space = {
            "learning_rate": {"grid": [0.01, 0.1]},
            "layers": {"grid": [1, 2]},
            "hidden_units": {"grid": [32, 64]},
        }
        search = {"strategy": "grid", "num_trials": 3, "seed": 3}
    return parse_spec(
        {
            "name": "packs",
            "data": {"source": "digits"},
            "trainable": "bn_softmax_mlp",
            "space": space,
            "fixed": {"optimizer": "sgd"},
            "search": search,
            "scheduler": {
                "kind": "asha",
                "grace_period": 1,
                "reduction_factor": 3,
                "max_epochs": 9,
            },
            "objective": {"metric": "val_accuracy", "mode": "max"},
            "resources": {"pack_size": pack_size},
            **extra,
        }
    )


def _packer(spec: SweepSpec, slots: int = 2) -> Packer | None:
    return packer_for(spec, n_features=64, n_classes=10, slots=slots)


def _shape(config: dict[str, Any]) -> Any:
    return get_trainable("bn_softmax_mlp").packing.shape_key(config)  # type: ignore[union-attr]


def test_pack_size_one_plans_exactly_the_unpacked_configs() -> None:
    spec = _spec(pack_size=1)
    assert _packer(spec) is None
    configs = sample_configs(spec.search_space(), 64, 3)
    assert pack_round(configs, None) == [[c] for c in configs]


def test_packs_share_shape_and_keep_every_other_draw() -> None:
    spec = _spec(pack_size=8)
    configs = sample_configs(spec.search_space(), 64, 3)
    units = pack_round(configs, _packer(spec))
    assert [len(u) for u in units] == [8] * 8
    flat = [member for unit in units for member in unit]
    for unit in units:
        assert len({_shape(m) for m in unit}) == 1
    # Members keep their own learning rate and momentum draws, in planning order.
    assert [m["learning_rate"] for m in flat] == [c["learning_rate"] for c in configs]
    assert [m["momentum"] for m in flat] == [c["momentum"] for c in configs]
    # Each pack's shape is its first member's own draw.
    for number, unit in enumerate(units):
        head = configs[8 * number]
        assert all(m["hidden_units"] == head["hidden_units"] for m in unit)


def test_auto_sizes_each_pack_by_its_shape_and_leaves_every_slot_packs_per_slot_packs() -> None:
    """``auto`` asks the trainable for each pack's size from the pack's shape (a shape too
    costly to fuse trains alone), and caps it so that each slot gets at least PACKS_PER_SLOT
    packs of the round (64 trials)."""
    spec = _spec()
    configs = sample_configs(spec.search_space(), 64, 3)
    for slots in (1, 2):
        cap = 64 // (PACKS_PER_SLOT * slots)
        units = pack_round(configs, _packer(spec, slots=slots))
        sizes = [len(u) for u in units]
        assert sum(sizes) == 64 and len(units) >= PACKS_PER_SLOT * slots
        # the trainable's own size for each pack's shape (the digits' 64 features, 10 classes)
        by_shape = [auto_pack_size(unit[0], "cpu", 64) for unit in units]
        assert all(size <= min(wanted, cap) for size, wanted in zip(sizes, by_shape, strict=True))
        alone = [size for size, wanted in zip(sizes, by_shape, strict=True) if wanted == 1]
        fused = [size for size, wanted in zip(sizes, by_shape, strict=True) if wanted > 1]
        assert alone and set(alone) == {1}, sizes  # shapes too costly to fuse: one member
        assert max(fused) == cap, (slots, sizes)  # cheap shapes: up to the cap, not beyond


def test_grid_points_pack_only_with_their_own_shape() -> None:
    spec = _spec(pack_size=16, strategy="grid")
    configs = sample_configs(spec.search_space(), 3, 3)
    units = pack_round(configs, _packer(spec))
    assert sorted(len(u) for u in units) == [6, 6, 6, 6]  # 4 shapes x (2 rates x 3 samples)
    for unit in units:
        assert len({(m["layers"], m["hidden_units"]) for m in unit}) == 1
    planned = sorted((c["learning_rate"], c["layers"], c["hidden_units"]) for c in configs)
    packed = sorted((m["learning_rate"], m["layers"], m["hidden_units"]) for u in units for m in u)
    assert packed == planned  # a grid's points are not redrawn


@pytest.mark.parametrize("name", ["hidden_units", "learning_rate", "batch_size"])
def test_each_parameters_marginal_is_unchanged(name: str) -> None:
    """Two-sample KS test per trial position across 300 seeds: the values a trial gets with
    packs of 8 against without packs (one value per seed: independent samples)."""
    spec = _spec(pack_size=8)
    packer = _packer(spec)
    space = spec.search_space()
    positions = (0, 3, 7, 13)  # a pack's head, members, a second pack's member
    packed: dict[int, list[float]] = {p: [] for p in positions}
    unpacked: dict[int, list[float]] = {p: [] for p in positions}
    for seed in range(300):
        configs = sample_configs(space, 16, seed)
        flat = [m for unit in pack_round(configs, packer) for m in unit]
        other = sample_configs(space, 16, 10_000 + seed)  # an independent unpacked sample
        for p in positions:
            packed[p].append(float(flat[p][name]))
            unpacked[p].append(float(other[p][name]))
    for p in positions:
        assert ks_2samp(packed[p], unpacked[p]).pvalue > 0.001, (name, p)
    # And the test can fail: a marginal that is changed (every trial takes the first pack's
    # head draw of another seed's smallest value) is rejected.
    if name == "hidden_units":
        skewed = [min(v, 40.0) for v in packed[3]]
        assert ks_2samp(skewed, unpacked[3]).pvalue < 0.001


def _searcher(spec: SweepSpec) -> RoundSearcher:
    return RoundSearcher(spec.search_space(), round_plan(spec, [1, 3, 9]), packer=_packer(spec))


def _complete_pack(searcher: RoundSearcher, trial_id: str, epochs: dict[int, int]) -> None:
    last = [[i, {"epoch": e, "val_accuracy": 0.5 + i / 1000}] for i, e in epochs.items()]
    searcher.on_trial_complete(trial_id, {"member_last": last})


def test_searcher_hands_out_packs_and_resumes_their_unended_members_together() -> None:
    spec = _spec(pack_size=4)
    live = _searcher(spec)
    first = live.suggest("p0")
    second = live.suggest("p1")
    assert first is not None and second is not None
    assert [i for i, _ in first[PACK_MEMBERS]] == [0, 1, 2, 3]
    assert live.members_of == {"p0": (0, 1, 2, 3), "p1": (4, 5, 6, 7)}
    assert all(live.trials[i].pack == 0 for i in range(4))
    _complete_pack(live, "p0", {0: 9, 1: 1, 2: 3, 3: 1})
    assert [live.trials[i].state for i in range(4)] == [
        TrialState.COMPLETED,
        TrialState.STOPPED_EARLY,
        TrialState.STOPPED_EARLY,
        TrialState.STOPPED_EARLY,
    ]

    # The journal's view of a kill: pack 0 ended; pack 1 ran, member 5 had left at epoch 1.
    journaled = {}
    for index in range(8):
        trial = live.trials[index]
        journaled[index] = type(trial)(
            index, trial.config, trial.round, trial_id=trial.trial_id, pack=trial.pack
        )
        if index < 4:
            journaled[index].state = live.trials[index].state
            journaled[index].history = list(live.trials[index].history)
    journaled[5].state = TrialState.STOPPED_EARLY
    journaled[5].history = [{"epoch": 1, "val_accuracy": 0.1}]
    for index in (4, 6, 7):
        journaled[index].checkpoint = "/ckpt/p1"

    resumed = _searcher(spec)
    resumed.replay(journaled)
    assert [[t.index for t in unit] for unit in resumed.continuations] == [[4, 6, 7]]
    continued = resumed.suggest("new")
    assert continued is not None
    assert [i for i, _ in continued[PACK_MEMBERS]] == [4, 6, 7]
    assert continued[RESUME_FROM] == {"4": "/ckpt/p1", "6": "/ckpt/p1", "7": "/ckpt/p1"}
    assert resumed.members_of["new"] == (4, 6, 7)
    # A pack down to one unended member still continues as a pack (from its member file).
    alone = _searcher(spec)
    journaled[6].state = journaled[7].state = TrialState.STOPPED_EARLY
    journaled[6].history = journaled[7].history = [{"epoch": 1, "val_accuracy": 0.1}]
    alone.replay(journaled)
    single = alone.suggest("single")
    assert single is not None and [i for i, _ in single[PACK_MEMBERS]] == [4]
    assert alone.members_of["single"] == (4,) and single[RESUME_FROM] == {"4": "/ckpt/p1"}

    following = resumed.suggest("next")
    assert following is not None
    assert [i for i, _ in following[PACK_MEMBERS]] == [8, 9, 10, 11]
    assert following == live.suggest("p2")  # the same plan goes on


def test_an_integer_pack_size_for_a_trainable_without_fused_training_is_refused(
    tmp_path: Any,
) -> None:
    (tmp_path / "plain_model.py").write_text(
        "from trainables.registry import BN_SOFTMAX_MLP\n"
        "import dataclasses\n"
        "PLAIN = dataclasses.replace(BN_SOFTMAX_MLP, name='plain', packing=None)\n"
    )
    data = {
        "name": "plain",
        "data": {"source": "digits"},
        "trainable": "plain_model:PLAIN",
        "space": {"learning_rate": {"scale": "log", "low": 1e-3, "high": 1.0}},
        "objective": {"metric": "val_accuracy"},
        "resources": {"pack_size": 4},
    }
    from orchestrator.spec import SpecError

    with pytest.raises(SpecError, match=r"resources.pack_size.*cannot be packed"):
        parse_spec(data, spec_dir=tmp_path)
    auto = parse_spec({**data, "resources": {"pack_size": "auto"}}, spec_dir=tmp_path)
    assert (
        packer_for(auto, n_features=64, n_classes=10, slots=2, search_path=(str(tmp_path),)) is None
    )


def test_pack_size_must_be_auto_or_a_positive_whole_number() -> None:
    from orchestrator.spec import SpecError

    for bad in (0, -2, "big", 2.5):
        with pytest.raises(SpecError, match="pack_size"):
            _spec(pack_size=bad)
    assert np.isclose(_spec(pack_size=3).resources.pack_size, 3)
