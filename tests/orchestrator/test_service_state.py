"""The service's state folder, process records and the choice ``caviar run`` makes (no Ray)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.service import client, fixed_nodes, identity, ports, wire
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
from orchestrator.service.status import status
from orchestrator.service.stop import down
from orchestrator.service.topology import ServiceError, Topology
from orchestrator.service.up import _end_what_is_left

# What tells a recorded process from a reused pid, finds a service's processes by the marker in
# their environment and lists a process group is read from /proc; without it (macOS) caviar
# cannot tell those apart (state.py says what it does instead), so these tests are Linux's.
reads_proc = pytest.mark.skipif(
    sys.platform != "linux", reason="reads /proc (Linux): start times, environments, groups"
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


@reads_proc
def test_a_reused_pid_is_not_the_service(tmp_path: Path) -> None:
    """A record is alive only if its pid started at the recorded moment (reboot, reuse)."""
    mine = start_ticks(os.getpid())
    assert process_alive(os.getpid(), mine)
    assert not process_alive(os.getpid(), (mine or 0) + 12345)
    assert not process_alive(2**22 + 7, None)  # above pid_max: never a process


@reads_proc
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
        assert status(_Lines(lines), state) == 1
        text = "".join(lines)
        assert "dead" in text and "caviar up restarts" in text
        assert down(_Lines(lines), state) == 0
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


@reads_proc
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


@pytest.fixture
def state(tmp_path: Path) -> Iterator[StateDir]:
    """A state folder of the test's own; its runtime folder (the socket's) goes with it."""
    folder = StateDir(tmp_path / "home")
    yield folder
    shutil.rmtree(folder.runtime_dir(), ignore_errors=True)


@contextlib.contextmanager
def _driver_answering(state: StateDir, kind: str) -> Iterator[None]:
    """Something on the driver's socket: the real driver's request handling ("same": this
    caviar), or a driver of another caviar ("other") or of one too old to say ("old")."""
    state.create(runtime=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(state.socket_path))
    server.listen(4)
    if kind == "same":
        from orchestrator.service.driver import Driver

        serve: Any = Driver(state.socket_path, state.path)._accept
    else:
        answer = {"ok": True, "pid": 1, "running": False}
        if kind == "other":
            answer["caviar"] = {"version": "0.0.1", "code": "0123456789abcdef"}

        def serve(server: socket.socket) -> None:
            while True:
                try:
                    conn, _ = server.accept()
                except OSError:
                    return
                with conn:
                    wire.Reader(conn).next()
                    wire.send(conn, answer)

    thread = threading.Thread(target=serve, args=(server,), daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown(socket.SHUT_RDWR)  # wakes the accept() for its thread to end
        server.close()
        thread.join(timeout=5)


def _with_a_recorded_driver(state: StateDir) -> None:
    """The state folder of a service that is up: a driver recorded (its pid never a process,
    as ``client.choose`` asks the socket, not the pid)."""
    state.create()
    record = ProcessRecord("driver", 2**22 + 7, 1, 0.0, "l")
    state.write(ServiceRecords({}, {"driver": record}))


def _spec(tmp_path: Path, tracking: str) -> Path:
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: x\n" + tracking)
    return spec


@pytest.fixture
def no_place_named(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Neither a Ray nor a tracking store named by the environment (the tests set them)."""
    for name in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_caviar_run_uses_a_service_of_the_same_caviar_when_nothing_names_another_place(
    state: StateDir, tmp_path: Path, no_place_named: pytest.MonkeyPatch
) -> None:
    spec = _spec(tmp_path, "tracking: {experiment: x}\n")  # an experiment is not a place
    assert client.choose(spec, state=state) == client.Choice(None)  # no service: no note
    _with_a_recorded_driver(state)
    with _driver_answering(state, "same"):  # the real driver's request handling
        choice = client.choose(spec, state=state)
        off = client.choose(spec, no_service=True, state=state)
    assert choice == client.Choice(state.socket_path)  # the sweep goes to the driver
    assert off == client.Choice(None)  # --no-service: a Ray of its own, silently


@pytest.mark.parametrize(
    ("spec_tracking", "environ", "driver", "why"),
    [
        ("", {"RAY_ADDRESS": "127.0.0.1:1"}, "same", None),
        ("tracking: {uri: sqlite:///mlflow.db}\n", {}, "same", "tracking.uri"),
        ("", {"MLFLOW_TRACKING_URI": "http://127.0.0.1:1"}, "same", "MLFLOW_TRACKING_URI"),
        ("tracking: {experiment: x}\n", {}, None, "not answering"),
        ("tracking: {experiment: x}\n", {}, "other", "runs other caviar code (version 0.0.1"),
        ("", {}, "old", "runs other caviar code (unknown version and code"),
    ],
)
def test_caviar_run_runs_on_its_own_ray_when_something_names_another_place_or_code(
    state: StateDir,
    tmp_path: Path,
    no_place_named: pytest.MonkeyPatch,
    spec_tracking: str,
    environ: dict[str, str],
    driver: str | None,
    why: str | None,
) -> None:
    """Another Ray (RAY_ADDRESS: silently), another store (the spec's or the environment's),
    a driver that does not answer or runs other caviar code: the sweep runs on a Ray of its
    own, and but for RAY_ADDRESS the first line says why."""
    for name, value in environ.items():
        no_place_named.setenv(name, value)
    spec = _spec(tmp_path, spec_tracking)
    _with_a_recorded_driver(state)
    with contextlib.ExitStack() as stack:
        if driver is not None:
            stack.enter_context(_driver_answering(state, driver))
        choice = client.choose(spec, state=state)
    assert choice.socket is None
    if why is None:
        assert choice.note is None
    else:
        assert choice.note is not None and why in choice.note, choice.note
        assert "running" in choice.note and "Ray of its own" in choice.note


def test_the_code_hash_follows_every_source_file_and_nothing_else(tmp_path: Path) -> None:
    """Two checkouts of the same code share a service; one changed file, or a new one, and
    they do not."""
    repository = Path(__file__).resolve().parents[2]
    roots = {}
    for package in identity.PACKAGES:
        roots[package] = tmp_path / package
        shutil.copytree(repository / package, roots[package], ignore=_no_bytecode)
    here = identity.code_identity()["code"]
    assert identity.code_hash(roots) == here  # another folder, the same code
    (roots["trainables"] / "notes.txt").write_text("not code")
    (roots["orchestrator"] / "__pycache__").mkdir(exist_ok=True)
    (roots["orchestrator"] / "__pycache__" / "x.pyc").write_bytes(b"compiled")
    assert identity.code_hash(roots) == here
    edited = roots["orchestrator"] / "service" / "client.py"
    edited.write_text(edited.read_text() + "\n# an edit\n")
    assert identity.code_hash(roots) != here
    edited.write_text(edited.read_text().removesuffix("\n# an edit\n"))
    assert identity.code_hash(roots) == here
    (roots["trainables"] / "extra.py").write_text("")
    assert identity.code_hash(roots) != here


def _no_bytecode(folder: str, names: list[str]) -> list[str]:
    return [n for n in names if n == "__pycache__"]


def test_the_test_run_never_reaches_the_users_service() -> None:
    """The whole run has a CAVIAR_HOME of its own (tests/conftest.py), also in what the
    tests' ``caviar`` processes inherit: a user's ``caviar up`` never gets the tests'
    sweeps, and no test depends on the user's home."""
    from conftest import HOME_PREFIX, clean_env

    home = Path(os.environ["CAVIAR_HOME"])
    assert home.name.startswith(HOME_PREFIX)
    assert StateDir().path == home.resolve() != (Path.home() / ".caviar").resolve()
    assert StateDir().read() is None  # nothing is up there
    assert clean_env()["CAVIAR_HOME"] == str(home)


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


def test_a_trial_no_node_of_the_service_fits_is_refused_at_once() -> None:
    """caviar up's nodes never grow: a GPU ask on CPU-only nodes is a spec error (exit 2)
    naming the fix, as on a local Ray, instead of trials pending until killed."""
    head = {"is_head_node": True, "resources_total": {"CPU": 0.0, "memory": 1e9}}
    worker = {"is_head_node": False, "resources_total": {"CPU": 2.0, "memory": 1e9}}
    gpu_worker = {"is_head_node": False, "resources_total": {"CPU": 2.0, "GPU": 1.0}}
    error = fixed_nodes.refusal([head, worker], 1, 0.25, workers=1)
    assert error is not None and error.exit_code == 2
    text = str(error)
    assert (
        "resources.gpus_per_trial: asks for 0.25 GPU per trial; the most any node offers is 0"
        in text
    )
    assert "wait forever" in text and "set resources.gpus_per_trial: 0" in text
    assert fixed_nodes.refusal([head, worker], 1, 0) is None
    assert fixed_nodes.refusal([head, gpu_worker], 1, 0.25, workers=1) is None
    too_many_cpus = str(fixed_nodes.refusal([head, worker], 4, 0, workers=1))
    assert "at most 2" in too_many_cpus and "caviar up --cpus-per-worker N" in too_many_cpus
    worker_down = str(fixed_nodes.refusal([head], 1, 0, workers=1))
    assert "only 0 of its 1 worker node(s) are up" in worker_down


# A service's leader with a child in its group that holds the service's port (MLflow's server
# and its uvicorn child); "stranger": the child does not carry the service's marker.
_LEADER = """
import os, subprocess, sys, time
env = dict(os.environ)
if sys.argv[2] == "stranger":
    env.pop("CAVIAR_SERVICE_ID")
child = (
    "import socket, sys, time; s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); "
    "s.listen(8); time.sleep(600)"
)
subprocess.Popen([sys.executable, "-c", child, sys.argv[1]], env=env)
time.sleep(600)
"""


@reads_proc
@pytest.mark.parametrize("whose", ["ours", "stranger"])
def test_a_dead_leaders_group_is_degraded_and_ended_only_when_it_is_the_services(
    state: StateDir, whose: str
) -> None:
    state.create(runtime=True)
    port = ports.pick(None)
    env = {**os.environ, MARKER_ENV: marker(state.path, "mlflow")}
    leader = subprocess.Popen(
        [sys.executable, "-c", _LEADER, str(port), whose], env=env, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 30
        while not ports.listening(port):
            assert time.monotonic() < deadline, "the stand-in child never listened"
            time.sleep(0.1)
        record = ProcessRecord(
            "mlflow", leader.pid, start_ticks(leader.pid), time.time(), "l", {"mlflow": port}
        )
        settings = {
            "workers": 1,
            "mlflow_port": port,
            "backend_store_uri": f"sqlite:///{state.path / 'mlflow.db'}",
            "ports": {"mlflow": {"mlflow": port}},
        }
        records = ServiceRecords(settings, {"mlflow": record})
        state.write(records)
        leader.kill()  # the leader alone: its child lives on in the group, on the port
        leader.wait()
        (child,) = [p for p in _group(leader.pid) if p != leader.pid]
        lines: list[str] = []
        assert status(_Lines(lines), state) == 1
        row = next(line for line in "".join(lines).splitlines() if "  mlflow " in line)
        ended: list[str] = []
        _end_what_is_left(state, records, ["mlflow"], _Lines(ended))
        if whose == "ours":
            assert " degraded " in row, row
            assert f"mlflow: its leader (pid {leader.pid}) died, but its process group" in (
                "".join(lines)
            )
            assert f"still ran (pids {child}); ending it" in "".join(ended)
            assert not process_alive(child, None)
            assert ports.bindable(port)  # at once: caviar up starts it again on its port
            topology = Topology(state, settings, "token")
            topology.assign_ports(["mlflow"])
            assert topology.ports["mlflow"]["mlflow"] == port
        else:
            assert " dead " in row, row
            assert process_alive(child, None)  # not the service's: never signalled
            topology = Topology(state, settings, "token")
            with pytest.raises(ServiceError, match=f"port {port} .* is taken; stop what"):
                topology.assign_ports(["mlflow"])
    finally:
        for pid in _group(leader.pid):
            os.kill(pid, 9)
        if leader.poll() is None:
            leader.kill()
            leader.wait()


def _group(pgid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                found.append(int(entry.name))
    return found
