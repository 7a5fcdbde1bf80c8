"""caviar changes the environment only when told to run, never because a module was imported."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from orchestrator.environment import ENVIRONMENT_DEFAULTS, apply_environment_defaults

MODULES = (
    "orchestrator.cli",
    "orchestrator.engine.run",
    "orchestrator.engine.raystart",
    "orchestrator.store.tracking",
    "orchestrator.cluster.submit",
    "orchestrator.cluster.connection",
    "orchestrator.cluster.job_driver",
    "orchestrator.report.page",
)


def _environment_after(code: str) -> dict[str, str]:
    clean = {"PATH": "/usr/bin:/bin", "HOME": "/tmp"}
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport json, os; print(json.dumps(dict(os.environ)))"],
        env=clean,
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_caviar_changes_no_environment_variable() -> None:
    """Compared with importing the libraries alone (Ray and MLflow set variables of their own
    on import: RAY_CLIENT_MODE, a telemetry session id that differs per process)."""
    libraries = _environment_after("import ray, ray.tune, mlflow, torch")
    caviar = _environment_after("\n".join(f"import {m}" for m in MODULES))
    session = "_MLFLOW_TELEMETRY_SESSION_ID"
    assert {k: v for k, v in caviar.items() if k != session} == {
        k: v for k, v in libraries.items() if k != session
    }
    assert not set(ENVIRONMENT_DEFAULTS) & set(caviar)


def test_caviar_main_applies_the_defaults_before_anything_runs() -> None:
    after = _environment_after(
        "from orchestrator.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass"
    )
    assert {k: after.get(k) for k in ENVIRONMENT_DEFAULTS} == ENVIRONMENT_DEFAULTS


def _run_end_output(capsys: pytest.CaptureFixture[str]) -> str:
    """What MLflow's own code writes when a run ends against a tracking server (its ``View
    run ... at:`` lines), the server's answers faked: no server needed."""
    from mlflow.store.tracking.rest_store import RestStore
    from mlflow.tracking._tracking_service.client import TrackingServiceClient

    client = TrackingServiceClient("http://127.0.0.1:5000")
    assert isinstance(client.store, RestStore)
    run = SimpleNamespace(
        info=SimpleNamespace(experiment_id="1", run_name="trial-024"),
        data=SimpleNamespace(tags={}),
    )
    client.store.get_run = lambda run_id: run  # type: ignore[method-assign]
    capsys.readouterr()
    client._log_url("0123abcd")  # what end_run / set_terminated calls last
    return capsys.readouterr().out


def test_mlflow_prints_no_view_run_lines(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The sweep's progress and summary are what the user reads: MLflow's ``View run
    trial-024 at: ...`` per trial (driver and workers alike) is noise among them."""
    for name in ENVIRONMENT_DEFAULTS:
        monkeypatch.delenv(name, raising=False)  # restored after the test
    monkeypatch.delenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", raising=False)
    assert "View run trial-024 at: http://127.0.0.1:5000/" in _run_end_output(capsys)
    apply_environment_defaults()
    assert _run_end_output(capsys) == ""
