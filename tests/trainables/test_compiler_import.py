"""Optimizers without torch's compiler import: the same arithmetic, ~1.2 s less per process.

Each check runs in a fresh interpreter, since whether ``torch._dynamo`` has been imported is
process-wide (and the point of the module)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

TRAIN = """
import json, sys
import torch
from trainables import TensorSplits, TrainingSession, load_bundled, split_and_scale
torch.set_num_threads(1)
x, y, names, features = load_bundled("iris")
splits = split_and_scale(x, y, val_fraction=0.2, test_fraction=0.2, seed=0, standardize=True)
data = TensorSplits.from_splits(splits, "cpu")

def train(config):
    session = TrainingSession({"epochs": 3, "batch_size": 16, "hidden_units": 8, **config}, data)
    for _ in range(2):
        session.step()
    state = session.state_dict()              # optimizer.state_dict
    session.load_state_dict(state)            # optimizer.load_state_dict
    session.step()                            # zero_grad, step
    return [p.detach().clone() for p in session.model.parameters()]
"""


def _python(code: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


CONFIGS = [
    {"optimizer": "sgd", "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3},
    {"optimizer": "adam", "beta1": 0.8, "beta2": 0.99},
    {"optimizer": "rmsprop", "beta2": 0.95},
]


def test_a_session_trains_checkpoints_and_resumes_without_importing_the_compiler() -> None:
    result = _python(
        TRAIN
        + f"""
for config in {CONFIGS!r}:
    train(config)
print(json.dumps({{"dynamo": "torch._dynamo" in sys.modules}}))
"""
    )
    assert result == {"dynamo": False}


@pytest.mark.parametrize("config", CONFIGS, ids=[c["optimizer"] for c in CONFIGS])
def test_the_weights_are_bit_for_bit_those_of_torchs_own_path(config: dict) -> None:
    """Trained once before ``torch._dynamo`` is imported (the deferred path) and once after
    (torch's own wrappers, which the deferred path hands over to): identical weights."""
    result = _python(
        TRAIN
        + f"""
deferred = train({config!r})
assert "torch._dynamo" not in sys.modules
import torch._dynamo
own = train({config!r})
reseeded = train({{**{config!r}, "seed": 1}})
marker = getattr(torch.optim.Optimizer.zero_grad.__wrapped__, "__dynamo_disable")
print(json.dumps({{
    "equal": all(torch.equal(a, b) for a, b in zip(deferred, own)),
    "changed": any(not torch.equal(a, b) for a, b in zip(deferred, reseeded)),
    "handed_over": marker.__module__ != "trainables.compiler_import",
}}))
"""
    )
    assert result == {"equal": True, "changed": True, "handed_over": True}
