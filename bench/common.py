"""What both harnesses share: clean subprocess environments, timing, specs, statistics.

Every system runs as a subprocess in a fresh temporary folder, the way a user runs it, so that
end-to-end time includes interpreter start, imports, Ray start and shutdown, and every store
(MLflow SQLite, Optuna SQLite) is new and real.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO_ROOT / "bench"
SPECS_DIR = BENCH_DIR / "specs"
RESULTS_DIR = BENCH_DIR / "results"
ONE_MINUS_PREFIX = "one_minus_"
"""How the baselines name a log1m parameter: Ray Tune and Optuna have no log1m scale, so they
sample ``1 - x`` on a log scale under ``one_minus_<name>`` (the same distribution) and the
trial uses ``x = 1 - value``. :func:`mlp_config` undoes it when reading their stores."""


class BenchError(RuntimeError):
    """A benchmarked command failed or left no usable results; the message says where."""


@dataclass(frozen=True)
class Timed:
    """A command's run: when it started (epoch seconds, the clock stores use) and for how long
    (a monotonic clock, immune to clock steps)."""

    started_at: float
    seconds: float

    @property
    def ended_at(self) -> float:
        return self.started_at + self.seconds


def slots() -> int:
    """Trials that run at once: one per CPU this process may use (2 on the reference machine).

    ``sched_getaffinity`` rather than ``os.cpu_count`` because a container or ``taskset`` may
    give us fewer cores than the host has; Ray, which sizes caviar's and the baseline's
    parallelism, makes the same choice.
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS has no affinity API
        return max(1, os.cpu_count() or 1)


def clean_env(**extra: str) -> dict[str, str]:
    """This environment minus anything that points at a shared MLflow store or Ray cluster.

    A stray ``MLFLOW_TRACKING_URI`` or ``RAY_ADDRESS`` would send a benchmark's writes to
    someone else's server and time the network instead of the system. Telemetry is off so no
    run waits on an outside service.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_"))}
    env.update(
        RAY_USAGE_STATS_ENABLED="0",
        MLFLOW_DISABLE_TELEMETRY="true",
        PYTHONUNBUFFERED="1",
        TQDM_DISABLE="1",
    )
    env.update(extra)
    return env


def ray_token_env() -> dict[str, str]:
    """Token authentication with a fresh random token, held only in the child's environment.

    The same as ``caviar run`` does for its embedded Ray, so the baselines pay the same auth
    costs, the GCS port is not left open, and nothing is written to ``~/.ray/auth_token``.
    """
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


def busy_cores(seconds: float = 1.0) -> float:
    """How many cores' worth of CPU the whole machine used over the next ``seconds``
    (``/proc/stat``; 0.0 where it cannot be read)."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields) - idle, sum(fields)

    try:
        busy0, total0 = sample()
        time.sleep(seconds)
        busy1, total1 = sample()
    except OSError:
        return 0.0
    cores = os.cpu_count() or 1
    return cores * (busy1 - busy0) / max(1, total1 - total0)


def wait_for_quiet(max_busy: float = 0.3, timeout_s: float = 600.0) -> float:
    """Wait until the machine is quiet (under ``max_busy`` cores busy over a second, nothing
    else's work running) or ``timeout_s`` has passed; returns the seconds waited. Between two
    timed runs, so that a burst from another user's work lands between them, not inside."""
    started = time.monotonic()
    while busy_cores() > max_busy and time.monotonic() - started < timeout_s:
        time.sleep(2.0)
    return time.monotonic() - started


def run_timed(
    command: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    log_name: str,
    timeout_s: float,
) -> Timed:
    """Run ``command`` to exit and return when it started and ended.

    Output goes to a log file in ``cwd`` rather than a pipe, so a chatty command can never
    block on a full pipe while it is being timed. A non-zero exit or a timeout raises with the
    log's tail, because a failed run has no numbers worth keeping.
    """
    log_path = cwd / log_name
    with log_path.open("w", encoding="utf-8") as log:
        started_at = time.time()
        started = time.perf_counter()
        try:
            completed = subprocess.run(
                list(command),
                cwd=cwd,
                env=dict(env),
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise BenchError(
                f"{' '.join(command)} ran past {timeout_s:.0f} s\n{tail(log_path)}"
            ) from None
        elapsed = time.perf_counter() - started
    if completed.returncode != 0:
        raise BenchError(
            f"{' '.join(command)} exited {completed.returncode} in {cwd}\n{tail(log_path)}"
        )
    return Timed(started_at=started_at, seconds=elapsed)


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def caviar_command() -> list[str]:
    """``caviar`` from this interpreter's environment (the installed console script)."""
    script = Path(sys.executable).parent / "caviar"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "orchestrator.cli"]


def fresh_workdir(given: Path | None, prefix: str) -> Path:
    """The folder that holds every run's folder: ``given`` (which must be empty, so no stale
    store is read back as a result) or a new temporary one."""
    if given is None:
        return Path(tempfile.mkdtemp(prefix=prefix)).resolve()
    base = given.resolve()
    if base.exists() and any(base.iterdir()):
        raise BenchError(f"--workdir {base} is not empty; give an empty or new folder")
    base.mkdir(parents=True, exist_ok=True)
    return base


def load_yaml(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as file:
        data = yaml.safe_load(file)
    if not isinstance(data, dict):
        raise BenchError(f"{path} is not a YAML mapping")
    return data


def effective_spec(
    base: Mapping[str, Any],
    *,
    trials: int | None = None,
    max_epochs: int | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """The base spec with the benchmark's size overrides; the one file every system reads."""
    spec = yaml.safe_load(yaml.safe_dump(dict(base)))  # a deep copy of plain data
    if trials is not None:
        spec.setdefault("search", {})["num_trials"] = int(trials)
    if max_epochs is not None:
        scheduler = spec.setdefault("scheduler", {})
        scheduler["max_epochs"] = int(max_epochs)
        if "grace_period" in scheduler:
            scheduler["grace_period"] = min(int(scheduler["grace_period"]), int(max_epochs))
    if seed is not None:
        spec.setdefault("search", {})["seed"] = int(seed)
    return spec


def write_yaml(data: Mapping[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(dict(data), sort_keys=False), encoding="utf-8")
    return path


def write_json(data: Mapping[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(data), indent=2, default=str) + "\n", encoding="utf-8")


def max_epochs_of(spec: Mapping[str, Any]) -> int:
    """The epoch budget, by caviar's rule: scheduler.max_epochs, else fixed.epochs, else 30."""
    scheduler = spec.get("scheduler") or {}
    if scheduler.get("max_epochs") is not None:
        return int(scheduler["max_epochs"])
    fixed = spec.get("fixed") or {}
    return int(fixed.get("epochs", 30))


def mlp_config(params: Mapping[str, Any], max_epochs: int) -> dict[str, Any]:
    """A trial's parameters as the trainable's config: ``one_minus_x`` back to ``x``.

    Values may be the strings a store hands back ("0.01", "True"); the trainable's pydantic
    config coerces them, so the floor times exactly the configuration each trial ran.
    """
    config: dict[str, Any] = {}
    for key, value in params.items():
        if key.startswith(ONE_MINUS_PREFIX):
            config[key[len(ONE_MINUS_PREFIX) :]] = 1.0 - float(value)
        else:
            config[key] = value
    config["epochs"] = max_epochs
    return config


def load_splits(data: Mapping[str, Any]) -> Any:
    """The train/val/test splits of a spec's ``data`` section (bundled datasets only).

    What ``caviar run`` computes from the same section (same fractions, seed and scaling), done
    here with the trainables package alone, so the floor does not depend on the orchestrator's
    data plumbing. The benchmark spec uses scikit-learn's bundled digits.
    """
    from trainables import load_bundled, split_and_scale

    settings = {"source": "digits", "val_fraction": 0.2, "test_fraction": 0.2, "seed": 0}
    settings.update({"standardize": True, **dict(data)})
    x, y, class_names, feature_names = load_bundled(str(settings["source"]))
    return split_and_scale(
        x,
        y,
        val_fraction=float(settings["val_fraction"]),
        test_fraction=float(settings["test_fraction"]),
        seed=int(settings["seed"]),
        standardize=bool(settings["standardize"]),
        class_names=class_names,
        feature_names=feature_names,
    )


def median(values: Iterable[float | None]) -> float | None:
    """The median of the values present; None when there are none."""
    present = [float(v) for v in values if v is not None]
    return statistics.median(present) if present else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def machine_info() -> dict[str, Any]:
    """What a reader needs to compare numbers across machines and commits."""
    versions = {}
    for package in ("caviar", "torch", "ray", "mlflow", "optuna", "scikit-learn", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpus_usable": slots(),
        "memory_gib": _memory_gib(),
        "load_average": _load_average(),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "versions": versions,
    }


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except (OSError, ValueError):
        pass
    return None


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _git(*args: str) -> str | None:
    if shutil.which("git") is None:
        return None
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None
