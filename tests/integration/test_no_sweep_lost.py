"""No sweep lost: whatever stops `caviar run` (a SIGKILL at any moment, a torn journal line, a
second driver, a hung trial, a full disk), `--resume` finishes the sweep, once, with a tested
model, and nothing is left RUNNING in MLflow.

The kill-anywhere test joins one throwaway Ray head (`ray start --head`), so each of its many
runs costs the driver's start, not a cluster's. The number of kills is ``CAVIAR_TEST_KILLS``
(CI sets 30; ``make test`` runs fewer)."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import CAVIAR, clean_env, run_caviar
from mlflow import MlflowClient
from ray_head import PlainHead, plain_ray_head

from orchestrator.store import layout
from orchestrator.store.journal import JOURNAL
from orchestrator.store.markers import STARTING, SweepMarker, write_marker

pytestmark = pytest.mark.integration

N_TRIALS = 16
SPEC = """
name: {name}
data: {{source: digits, seed: 0}}
space:
  learning_rate: {{scale: log, low: 1.0e-3, high: 1.0}}
  hidden_units: {{scale: log, low: 16, high: 64, integer: true}}
fixed: {{optimizer: sgd, batch_size: 64, layers: 1}}
search: {{num_trials: {trials}, seed: {seed}}}
scheduler: {{kind: asha, grace_period: 2, reduction_factor: 3, max_epochs: 9}}
storage: {{{storage}checkpoint_every_s: 0.3, report_every_s: 0.2}}
"""


def _spec(folder: Path, name: str, seed: int = 3, trials: int = N_TRIALS, storage: str = "") -> str:
    (folder / f"{name}.yaml").write_text(
        SPEC.format(name=name, seed=seed, trials=trials, storage=storage)
    )
    return f"{name}.yaml"


def _interrupted(folder: Path, name: str) -> bool:
    """A sweep of this name has started (its marker exists) and not finished."""
    markers = (folder / "caviar_runs" / name).glob("*/caviar_sweep.json")
    return any('"finished"' not in marker.read_text() for marker in markers)


def _finished(folder: Path, name: str) -> bool:
    """The sweep of this name has ended and says so on disk (a plain run would start another)."""
    markers = list((folder / "caviar_runs" / name).glob("*/caviar_sweep.json"))
    return bool(markers) and all('"finished"' in marker.read_text() for marker in markers)


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlainHead]:
    with plain_ray_head(tmp_path_factory.mktemp("head"), num_cpus=2) as head:
        yield head


def _env(head: PlainHead) -> dict[str, str]:
    return clean_env(RAY_ADDRESS=head.address, RAY_AUTH_MODE="disabled")


def _start(folder: Path, args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [CAVIAR, *args],
        cwd=folder,
        env={**env, "PYTHONUNBUFFERED": "1"},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _journal_events(folder: Path, name: str, event: str, storage: str = "caviar_runs") -> set[int]:
    """The trial indices with a journaled ``event`` in the sweeps of this name."""
    found: set[int] = set()
    for journal in (folder / storage / name).glob(f"*/{JOURNAL}"):
        for line in journal.read_text(errors="replace").splitlines():
            if f'"e":"{event}"' in line:
                match = re.search(r'"i":(\d+)', line)
                if match:
                    found.add(int(match.group(1)))
    return found


def _wait_until(process: subprocess.Popen, ready: Callable[[], bool], timeout: float = 120) -> bool:
    """True once ``ready()`` holds; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.05)
    raise AssertionError(f"not ready in {timeout} s")


def _check_finished_sweep(folder: Path, name: str, trials: int = N_TRIALS) -> None:
    """One parent, FINISHED, tested, with a model; every trial once; nothing RUNNING."""
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], max_results=5000)
    parents = [r for r in runs if r.data.tags.get("caviar.kind") == "sweep"]
    assert len(parents) == 1, [p.info.run_id for p in parents]
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert "test_accuracy" in parent.data.metrics and parent.data.tags.get("caviar.model_uri")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    indices = sorted(int(c.data.tags["caviar.trial_index"]) for c in children)
    assert indices == list(range(trials))
    assert {r.info.status for r in runs} <= {"FINISHED", "FAILED"}
    ended = sum(parent.data.metrics[f"trials_{o}"] for o in ("completed", "stopped_early"))
    assert ended + parent.data.metrics["trials_diverged"] == trials


def _tear_last_line(journal: Path, rng: random.Random) -> None:
    """What a kill in the middle of a write would leave: part of a line, no newline."""
    lines = journal.read_bytes().splitlines(keepends=True)
    if lines:
        last = lines[-1]
        with journal.open("ab") as file:
            file.write(last[: rng.randrange(1, max(2, len(last) - 1))])


def test_sigkill_anywhere_then_resume_always_finishes(tmp_path: Path, ray_head: PlainHead) -> None:
    kills = int(os.environ.get("CAVIAR_TEST_KILLS", "6"))
    rng = random.Random(20261207)
    env = _env(ray_head)
    log = tmp_path / "run.log"
    aims = ["start", "training", "training", "after training"]
    landed: Counter[str] = Counter()
    sweep, resume = 0, False
    spec = _spec(tmp_path, f"kill-{sweep}", seed=sweep)
    while sum(landed.values()) < kills:
        name = f"kill-{sweep}"
        before = _journal_size(tmp_path, name)
        process = _start(tmp_path, ["run", spec, *(["--resume"] if resume else [])], env, log)
        aim = aims[sum(landed.values()) % len(aims)]
        if aim == "start":
            time.sleep(rng.uniform(0.2, 4.0))
        elif aim == "training":  # once this driver has journaled something of its own
            if _wait_until(process, lambda n=name, b=before: _journal_size(tmp_path, n) > b):
                time.sleep(rng.uniform(0.0, 3.0))
        elif _wait_until(process, lambda n=name: _phase(tmp_path, n, log) == "after training"):
            time.sleep(rng.uniform(0.0, 2.5))  # testing the best trial, logging the model
        if process.poll() is None:
            phase = _phase(tmp_path, name, log)  # where the kill really landed
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            landed[phase] += 1
            if rng.random() < 0.5:
                for journal in (tmp_path / "caviar_runs" / name).glob(f"*/{JOURNAL}"):
                    _tear_last_line(journal, rng)
            resume = _interrupted(tmp_path, name)
            if _finished(tmp_path, name):  # the kill landed after the sweep was marked done
                _check_finished_sweep(tmp_path, name)
                sweep, resume = sweep + 1, False
                spec = _spec(tmp_path, f"kill-{sweep}", seed=sweep)
            continue
        output = log.read_text()
        assert process.returncode == 0 and "finished in" in output, output[-4000:]
        _check_finished_sweep(tmp_path, name)
        sweep, resume = sweep + 1, False
        spec = _spec(tmp_path, f"kill-{sweep}", seed=sweep)
    if resume:  # the last sweep was killed: finish it
        final = run_caviar("run", spec, "--resume", cwd=tmp_path, **_plain(env))
        assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
        _check_finished_sweep(tmp_path, f"kill-{sweep}")
    print(f"kills by phase: {dict(landed)}; sweeps: {sweep + 1}")
    assert all(landed[phase] >= max(1, kills // 8) for phase in aims), landed


@pytest.mark.parametrize("resume", [True, False], ids=["resume", "plain run"])
@pytest.mark.usefixtures("in_tmp_path")  # its experiment, made here, keeps artifacts in ./mlruns
def test_a_sweep_killed_while_starting_is_started_again_with_no_orphan_parent(
    tmp_path: Path, ray_head: PlainHead, resume: bool
) -> None:
    """The state a kill leaves between the marker and the parent run's id in it (the window
    kill-anywhere hit in CI once): a ``starting`` marker and a RUNNING parent nothing names.
    Either rerun ends with that sweep's one parent, finished; the orphan is gone."""
    name, trials = "half-started", 4
    spec = _spec(tmp_path, name, trials=trials)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweep_id = "20261207-000000-abcdef"
    write_marker(
        tmp_path / "caviar_runs" / name / sweep_id,
        SweepMarker(sweep_id, STARTING, "", uri, name, "hash", None),
    )
    client = MlflowClient(uri)
    experiment_id = client.create_experiment(name)
    tags = {layout.KIND: layout.SWEEP, layout.SWEEP_ID: sweep_id}
    orphan = client.create_run(experiment_id, tags=tags).info.run_id

    result = run_caviar(
        "run", spec, *(["--resume"] if resume else []), cwd=tmp_path, **_plain(_env(ray_head))
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    if resume:
        assert f"sweep {sweep_id} was stopped before it began; starting it anew" in result.stdout
    _check_finished_sweep(tmp_path, name, trials=trials)
    assert client.get_run(orphan).info.lifecycle_stage == "deleted"
    assert not (tmp_path / "caviar_runs" / name / sweep_id).exists()


def _journal_size(folder: Path, name: str) -> int:
    return sum(j.stat().st_size for j in (folder / "caviar_runs" / name).glob(f"*/{JOURNAL}"))


def _phase(folder: Path, name: str, log: Path) -> str:
    """Where a run of sweep ``name`` is: its start (no sweep line printed yet), training (a
    trial not ended), or after training (testing the best trial, logging the model)."""
    if not re.search(r"^caviar: (sweep|resuming) ", log.read_text(errors="replace"), re.M):
        return "start"
    if len(_journal_events(folder, name, "end")) < N_TRIALS:
        return "training"
    return "after training"


def _plain(env: dict[str, str]) -> dict[str, str]:
    return {k: env[k] for k in ("RAY_ADDRESS", "RAY_AUTH_MODE")}


def test_a_second_driver_on_a_running_sweep_is_refused(tmp_path: Path, ray_head: PlainHead) -> None:
    env = _env(ray_head)
    spec = _spec(tmp_path, "twice", trials=32)
    # Slow while the second drivers try: its epochs wait while the file `slow` exists.
    (tmp_path / "models.py").write_text(MODELS)
    (tmp_path / "slow").touch()
    (tmp_path / spec).write_text((tmp_path / spec).read_text() + "trainable: models:SLOW\n")
    log = tmp_path / "first.log"
    first = _start(tmp_path, ["run", spec], env, log)
    try:
        assert _wait_until(first, lambda: bool(_journal_events(tmp_path, "twice", "trial")))
        seconds = [
            subprocess.Popen(
                [CAVIAR, *args],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for args in (["run", spec], ["run", spec, "--resume"]) * 2
        ]
        for second in seconds:
            out, err = second.communicate(timeout=120)
            assert second.returncode == 2, out[-2000:] + err[-2000:]
            holder = re.search(r"sweep twice is running now \(caviar, pid (\d+) on ", err)
            assert holder and os.getpgid(int(holder.group(1))) == first.pid, err
            assert "Traceback" not in err
        assert first.poll() is None, "the first sweep ended before the second drivers tried"
        (tmp_path / "slow").unlink()
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    # Its holder gone, the lock is free: the killed sweep resumes and finishes.
    resumed = run_caviar("run", spec, "--resume", cwd=tmp_path, **_plain(env))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    _check_finished_sweep(tmp_path, "twice", trials=32)
    journal = next((tmp_path / "caviar_runs" / "twice").glob(f"*/{JOURNAL}"))
    started = [line for line in journal.read_text().splitlines() if '"e":"trial"' in line]
    assert len(started) == 32  # every trial started once: no second driver ran any


MODELS = '''
"""The built-in network, its epochs slowed while the file `slow` is beside this file
(SLOW), or with the trial of seed 7 hanging in its third epoch (HANGS)."""
import threading
import time
from pathlib import Path

from trainables.registry import BN_SOFTMAX_MLP, TrainableDefinition

FLAG = Path(__file__).with_name("slow")


class Wrapped:
    """The built-in session, with ``before_step(session)`` run before each epoch."""

    def __init__(self, session, before_step):
        self.session = session
        self.before_step = before_step

    def __getattr__(self, name):
        return getattr(self.session, name)

    def step(self):
        self.before_step(self.session)
        return self.session.step()


def _slow(session):
    if FLAG.exists():
        time.sleep(0.5)


def _hang(session):
    if session.config.seed == 7 and session.epoch == 2:
        threading.Event().wait()  # a dead-locked data loader


def _wrapping(name, before_step):
    return TrainableDefinition(
        name=name,
        description=name,
        config_model=BN_SOFTMAX_MLP.config_model,
        metrics=BN_SOFTMAX_MLP.metrics,
        make_session=lambda config, tensors, device: Wrapped(
            BN_SOFTMAX_MLP.make_session(config, tensors, device), before_step
        ),
    )


SLOW = _wrapping("slow", _slow)
HANGS = _wrapping("hangs", _hang)
'''


def test_a_hung_trial_times_out_and_the_sweep_goes_on(tmp_path: Path) -> None:
    (tmp_path / "models.py").write_text(MODELS)
    (tmp_path / "spec.yaml").write_text(
        """
name: hung
trainable: models:HANGS
data: {source: digits, seed: 0}
space:
  seed: {values: [1, 7, 3]}
fixed: {optimizer: sgd, batch_size: 64, layers: 1, hidden_units: 16, learning_rate: 0.05}
search: {strategy: grid}
scheduler: {kind: fifo, max_epochs: 4}
resources: {epoch_timeout_s: 8, pack_size: 1}
storage: {max_failures: 0}
"""
    )
    started = time.monotonic()
    result = run_caviar("run", "spec.yaml", cwd=tmp_path, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "has sent nothing for" in output  # the live notice, before the timeout
    assert "caviar: trial 1 failed: timed out after 8 s in epoch 3" in output
    assert "Traceback" not in output
    assert "2 completed, 0 stopped early, 0 diverged, 1 failed" in output, output[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("hung").experiment_id])
    errors = [r.data.tags.get("caviar.error", "") for r in runs]
    assert any(re.fullmatch(r"timed out after 8 s in epoch 3", e) for e in errors), errors
    assert {r.info.status for r in runs} <= {"FINISHED", "FAILED"}
    assert time.monotonic() - started < 240


def _mount_small_tmpfs(where: Path, megabytes: int) -> None:
    where.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(where)],
        check=True,
        capture_output=True,
    )


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 20 MB file system of its own (root mounts a tmpfs; CI runs as root)."""
    if os.geteuid() != 0:
        if os.environ.get("CAVIAR_TEST_REQUIRE_ROOT"):
            pytest.fail("CAVIAR_TEST_REQUIRE_ROOT is set but the tests do not run as root")
        pytest.skip("mounting a small file system needs root (CI runs this as root)")
    disk = tmp_path / "disk"
    _mount_small_tmpfs(disk, 20)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_stops_with_one_line_and_resume_finishes(
    tmp_path: Path, small_disk: Path
) -> None:
    """The sweep's storage is on a small disk that fills while it trains: one clear line
    within seconds, the runs marked interrupted, and after space is freed --resume finishes."""
    spec = _spec(tmp_path, "full", trials=64, storage=f"path: {small_disk}, ")
    (tmp_path / "models.py").write_text(MODELS)  # slow: it still trains when the disk fills
    (tmp_path / "slow").touch()
    (tmp_path / spec).write_text((tmp_path / spec).read_text() + "trainable: models:SLOW\n")
    filler = small_disk / "filler"
    log = tmp_path / "full.log"
    process = _start(tmp_path, ["run", spec], clean_env(), log)
    try:
        assert _wait_until(
            process, lambda: bool(_journal_events(small_disk, "full", "result", storage="."))
        )
        with filler.open("wb") as file:  # the disk fills up while the sweep trains
            chunk = b"\0" * (1 << 20)
            try:
                while True:
                    file.write(chunk)
                    file.flush()
            except OSError:
                pass
        filled = time.monotonic()
        process.wait(timeout=120)
        stopped_in = time.monotonic() - filled
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    output = log.read_text()
    assert process.returncode == 1, output[-4000:]  # (0: it ended before the disk filled)
    errors = [line for line in output.splitlines() if line.startswith("caviar: error")]
    assert len(errors) == 1 and "is full" in errors[0], output[-4000:]
    assert "Traceback" not in output, output[-6000:]
    print(f"the sweep stopped {stopped_in:.1f} s after its disk was full")
    assert stopped_in < 10, stopped_in
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("full").experiment_id])
    assert "RUNNING" not in {r.info.status for r in runs}
    filler.unlink()  # space freed: the sweep finishes
    (tmp_path / "slow").unlink()
    resumed = run_caviar("run", spec, "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    _check_finished_sweep(tmp_path, "full", trials=64)


def test_a_sweep_of_many_small_trials_always_ends_with_its_summary(tmp_path: Path) -> None:
    """Ray's shutdown overlaps the summary's work; an object of Ray's freed during it once
    ended the process (exit 1, `The core worker has already been shutdown`, no summary) in 2
    of 5 sweeps of 1024 one-epoch trials. ``CAVIAR_TEST_MANY`` sets trials x repetitions (CI:
    1024x3)."""
    trials, repetitions = (int(n) for n in os.environ.get("CAVIAR_TEST_MANY", "128x1").split("x"))
    for repetition in range(repetitions):
        name = f"many-{repetition}"
        spec = _spec(tmp_path, name, seed=repetition, trials=trials)
        text = (tmp_path / spec).read_text()
        text = re.sub(r"scheduler: .*", "scheduler: {kind: fifo, max_epochs: 1}", text)
        (tmp_path / spec).write_text(text + "resources: {pack_size: 1}\n")
        result = run_caviar("run", spec, cwd=tmp_path, timeout=900)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-3000:]
        assert f"Sweep {name} (" in output and "test accuracy:" in output, output[-3000:]
        assert "core worker has already been shutdown" not in output
