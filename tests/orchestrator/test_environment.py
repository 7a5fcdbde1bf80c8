"""caviar changes the environment only when told to run, never because a module was imported."""

from __future__ import annotations

import json
import subprocess
import sys

from orchestrator.environment import ENVIRONMENT_DEFAULTS

MODULES = (
    "orchestrator.cli",
    "orchestrator.engine.run",
    "orchestrator.engine.raystart",
    "orchestrator.store.tracking",
    "orchestrator.cluster.submit",
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
