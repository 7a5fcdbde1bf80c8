"""CAVIAR_NO_SPEEDUPS=1 turns off every speed-up that uses another library's internals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import clean_env

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys
from orchestrator import speedups
from orchestrator.store import sqlite_seed
from trainables import compiler_import
import torch
print(json.dumps({
    "enabled": speedups.enabled(),
    "seeded": sqlite_seed.seed_new_sqlite_store("sqlite:///" + sys.argv[1]),
    "markers": compiler_import.defer_compiler_import(),
    "eager": compiler_import.eager_optimizer(torch.optim.SGD) is not torch.optim.SGD,
}))
"""


@pytest.mark.parametrize("switch", ["", "0", "1"])
def test_the_switch_turns_every_speedup_off_and_only_then(tmp_path: Path, switch: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path / "new.db")],
        cwd=REPO,
        env=clean_env(CAVIAR_NO_SPEEDUPS=switch),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    on = switch != "1"
    assert probe == {"enabled": on, "seeded": on, "markers": 4 if on else 0, "eager": on}
    assert (tmp_path / "new.db").exists() == on  # off: MLflow creates the store itself
