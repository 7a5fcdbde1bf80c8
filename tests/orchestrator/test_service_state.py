"""The service's state folder, process records and the choice ``caviar run`` makes (no Ray)."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.service import client, ports, up
from orchestrator.service.state import (
    MARKER_ENV,
    ProcessRecord,
    ServiceRecords,
    StateDir,
    marked_processes,
    marker,
    process_alive,
    start_ticks,
)


def test_state_folder_is_private_and_records_round_trip(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "home")
    old = os.umask(0o022)
    try:
        state.create()
        token = state.token()
        record = ProcessRecord("mlflow", os.getpid(), start_ticks(os.getpid()), time.time(), "x")
        state.write(ServiceRecords({"workers": 2}, {"mlflow": record}))
    finally:
        os.umask(old)
    assert stat.S_IMODE(state.path.stat().st_mode) == 0o700
    assert stat.S_IMODE((state.path / "auth_token").stat().st_mode) == 0o600
    assert stat.S_IMODE(state.records_path.stat().st_mode) == 0o600
    assert state.token() == token and len(token) == 64  # kept across calls
    read = state.read()
    assert read is not None and read.settings == {"workers": 2}
    assert read.processes["mlflow"].alive()


def test_a_reused_pid_is_not_the_service(tmp_path: Path) -> None:
    """A record is alive only if its pid started at the recorded moment (reboot, reuse)."""
    mine = start_ticks(os.getpid())
    assert process_alive(os.getpid(), mine)
    assert not process_alive(os.getpid(), (mine or 0) + 12345)
    assert not process_alive(2**22 + 7, None)  # above pid_max: never a process


def test_stale_records_are_reported_and_cleaned_without_killing_anyone(tmp_path: Path) -> None:
    """After a reboot the records name pids that are gone or belong to someone else now."""
    state = StateDir(tmp_path / "home")
    state.create()
    # A live stand-in for a process that is not the recorded one; killed below, never waited on.
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        ticks = start_ticks(sleeper.pid)
        records = ServiceRecords(
            {"workers": 1, "ports": {}},
            {
                # the pid lives, but it is not the process that was recorded (other start time)
                "ray-head": ProcessRecord("ray-head", sleeper.pid, (ticks or 0) + 99, 0.0, "l"),
                "mlflow": ProcessRecord("mlflow", 2**22 + 7, 1, 0.0, "l"),
            },
        )
        state.write(records)
        lines: list[str] = []
        assert up.status(_Lines(lines), state) == 1
        text = "".join(lines)
        assert "dead" in text and "caviar up restarts" in text
        assert up.down(_Lines(lines), state) == 0
        assert state.read() is None
        assert sleeper.poll() is None  # never signalled: it was not ours
    finally:
        sleeper.kill()
        sleeper.wait()


def test_two_state_folders_never_share_runtime_files_or_markers(tmp_path: Path) -> None:
    one, two = StateDir(tmp_path / "a"), StateDir(tmp_path / "b")
    assert one.runtime_dir() != two.runtime_dir()
    assert one.socket_path != two.socket_path
    assert len(str(one.socket_path)) < 100  # a Unix socket path must stay short
    assert marker(one.path, "ray-head") != marker(two.path, "ray-head")


def test_marked_processes_finds_exactly_a_services_processes(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "home")
    env = {**os.environ, MARKER_ENV: marker(state.path, "ray-worker-1")}
    # Stand-ins carrying the marker; killed in the finally below, never waited on.
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    ours = subprocess.Popen(sleep, env=env)
    other_env = {**os.environ, MARKER_ENV: marker(state.path, "ray-worker-10")}
    other = subprocess.Popen(sleep, env=other_env)
    try:
        assert marked_processes(marker(state.path, "ray-worker-1")) == [ours.pid]
        everything = marked_processes(marker(state.path, ""))
        assert sorted(everything) == sorted([ours.pid, other.pid])
        assert marked_processes(marker(tmp_path / "elsewhere", "")) == []
    finally:
        for process in (ours, other):
            process.kill()
            process.wait()


def test_a_taken_port_is_not_handed_out() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        taken = holder.getsockname()[1]
        assert not ports.bindable(taken)
        assert ports.pick(taken) != taken
    assert ports.pick(None, [1, 2]) not in (1, 2)


@pytest.mark.parametrize(
    ("spec_tracking", "environ", "why"),
    [
        ("", {"RAY_ADDRESS": "127.0.0.1:1"}, None),
        ("tracking: {uri: sqlite:///mlflow.db}\n", {}, "tracking.uri"),
        ("", {"MLFLOW_TRACKING_URI": "http://127.0.0.1:1"}, "MLFLOW_TRACKING_URI"),
        ("tracking: {experiment: x}\n", {}, "not answering"),
    ],
)
def test_caviar_run_uses_the_service_only_when_nothing_names_another_place(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    spec_tracking: str,
    environ: dict[str, str],
    why: str | None,
) -> None:
    for name in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: x\n" + spec_tracking)
    state = StateDir(tmp_path / "home")
    assert client.choose(spec, state=state).socket is None  # no service at all: no note
    assert client.choose(spec, state=state).note is None
    state.create()
    record = ProcessRecord("driver", 2**22 + 7, 1, 0.0, "l")
    state.write(ServiceRecords({}, {"driver": record}))
    choice = client.choose(spec, state=state)
    assert choice.socket is None  # here the driver is not up, or something names elsewhere
    if why is None:
        assert choice.note is None
    else:
        assert choice.note is not None and why in choice.note
    assert client.choose(spec, no_service=True, state=state).note is None


class _Lines:
    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    def write(self, text: str) -> int:
        self.lines.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_a_sigterm_lets_a_finished_sweeps_plots_finish_and_interrupts_a_running_sweep(
    tmp_path: Path,
) -> None:
    from orchestrator.service.driver import Driver

    driver = Driver(tmp_path / "driver.sock", tmp_path)
    driver.drawing = True  # `caviar down` while the last sweep's plots are drawn
    driver._on_sigterm(15, None)  # returns: the plots finish, then the serve loop ends
    assert driver.stopping
    driver.drawing = False
    with pytest.raises(SystemExit):  # idle: it ends at once
        driver._on_sigterm(15, None)
    driver.running = True  # a sweep under way ends interrupted, resumable
    with pytest.raises(KeyboardInterrupt):
        driver._on_sigterm(15, None)
    assert driver.interrupted
