"""Shared helpers: run the real ``caviar`` command as a user would, in a clean environment.

The whole run is isolated from any ``caviar up`` service of the user's: ``CAVIAR_HOME`` (the
only thing that locates a service, ``orchestrator/service/state.py``) names an empty folder of
the run's own, set before any test and inherited by every ``caviar`` the tests start. Without
it, ``make test`` with a service up sent the integration sweeps to that service.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

CAVIAR = str(Path(sys.executable).parent / "caviar")
HOME_PREFIX = "caviar-test-home-"  # the run's own CAVIAR_HOME: no service is ever up there
_HOME = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    """Tests that use caviar as a library get the environment ``caviar`` itself sets first
    (no telemetry, Tune's logger files and SIGINT handler off), before MLflow is imported;
    and a ``CAVIAR_HOME`` of the run's own, whatever the user's shell set."""
    from orchestrator.environment import apply_environment_defaults

    apply_environment_defaults()
    # Set here, not in a fixture: collection and every subprocess of the run see it.
    home = tempfile.mkdtemp(prefix=HOME_PREFIX)
    config.stash[_HOME] = home
    os.environ["CAVIAR_HOME"] = home
    # A background job of a non-interactive shell (`make test &`, nohup, some CI runners)
    # starts with SIGINT ignored, and every process started from it inherits that: the Ctrl-C
    # tests' `caviar run` would never see its SIGINT and finish as if none came. A handler
    # here (Python's own) is reset to the default in each child at exec, so every child
    # starts with SIGINT at its default, as from a terminal.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_unconfigure(config: pytest.Config) -> None:
    home = config.stash.get(_HOME, None)
    if home is not None:
        shutil.rmtree(home, ignore_errors=True)


def clean_env(**extra: str) -> dict[str, str]:
    """The user's environment minus anything that would point caviar at a shared store."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_"))}
    env.update(RAY_USAGE_STATS_ENABLED="0", MLFLOW_DISABLE_TELEMETRY="true", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def run_caviar(
    *args: str, cwd: Path, timeout: float = 600, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CAVIAR, *args],
        cwd=cwd,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_python_json(script: str, timeout: float = 180, **env: str) -> dict[str, Any]:
    """Run ``script`` in a fresh interpreter from the repository root; the JSON object its
    last line of output prints (it must exit 0)."""
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=Path(__file__).resolve().parents[1],
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture
def caviar_cmd() -> str:
    return CAVIAR


@pytest.fixture(autouse=True, scope="session")
def _caviar_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """One cache folder for the whole run (the migrated SQLite template is built once), and
    none of it in the user's home. Set in os.environ, so every ``caviar`` process inherits it."""
    os.environ["CAVIAR_CACHE_DIR"] = str(tmp_path_factory.mktemp("caviar-cache"))


CHECKOUT_MLRUNS = Path(__file__).resolve().parents[1] / "mlruns"


@pytest.fixture
def in_tmp_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The test runs in its own folder: a SQLite store's artifacts (./mlruns) land there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(autouse=True)
def _no_mlflow_artifacts_in_the_checkout() -> Any:
    """A test's MLflow artifacts stay under its own folder. A SQLite store names no artifact
    location, so MLflow puts a new experiment's artifacts in ``./mlruns`` of the working
    directory: a test that opens one in ``tmp_path`` from the checkout must run there
    (the ``in_tmp_path`` fixture). Where the checkout already has an mlruns/ (a
    developer's own runs), nothing is checked."""
    before = CHECKOUT_MLRUNS.exists()
    yield
    if not before and CHECKOUT_MLRUNS.exists():
        shutil.rmtree(CHECKOUT_MLRUNS, ignore_errors=True)
        pytest.fail(
            "this test wrote MLflow artifacts into the checkout's mlruns/; run it in its own "
            "folder (pytest.mark.usefixtures('in_tmp_path'))"
        )
