"""The service's state folder: where it is, what runs, and whether a record is still true.

One folder per user (``$CAVIAR_HOME``, default ``~/.caviar``), mode 0700, holding:

- ``services.json``: one :class:`ProcessRecord` per process ``caviar up`` started (its pid,
  the kernel's start time of that pid, its ports, its log), written atomically;
- ``auth_token``: the Ray cluster's token (0600); it reaches the services and the driver in
  their environment only, never in an argv or a log;
- ``logs/``: each service's output; ``mlflow/``: the default store and artifacts;
- ``lock``: held while ``caviar up`` or ``caviar down`` changes any of it.

Ray's temp folder and the driver's socket live in a short folder of their own under /tmp
(:meth:`StateDir.runtime_dir`): Unix socket paths must stay under ~107 bytes, and a home
folder can be long. Its name is derived from the state folder's path, so two state folders
(two users, or two tests) never share one.

Invariant: a record is *alive* only when its pid exists **and** started at the recorded
moment (``/proc/PID/stat`` field 22), so a pid reused after a reboot or by another program is
never mistaken for the service, and never signalled.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HOME_ENV = "CAVIAR_HOME"
RECORDS = "services.json"
TOKEN = "auth_token"


@dataclass
class ProcessRecord:
    """A process ``caviar up`` started, and how to recognise it later."""

    name: str  # ray-head, ray-worker-1, ..., mlflow, driver
    pid: int
    start_ticks: int | None  # /proc/PID/stat starttime; None where there is no /proc
    started_at: float  # wall clock, for "since"
    log: str
    ports: dict[str, int] = field(default_factory=dict)

    def alive(self) -> bool:
        return process_alive(self.pid, self.start_ticks)


@dataclass
class ServiceRecords:
    """``services.json``: the settings ``caviar up`` was given and every process it started."""

    settings: dict[str, Any] = field(default_factory=dict)
    processes: dict[str, ProcessRecord] = field(default_factory=dict)

    def to_json(self) -> str:
        data = {
            "settings": self.settings,
            "processes": {k: asdict(v) for k, v in self.processes.items()},
        }
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ServiceRecords:
        data = json.loads(text)
        processes = {k: ProcessRecord(**v) for k, v in data.get("processes", {}).items()}
        return cls(settings=dict(data.get("settings", {})), processes=processes)


class StateDir:
    """The state folder; constructing it touches nothing (``create`` makes it)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = (path or default_home()).expanduser().resolve()

    @property
    def records_path(self) -> Path:
        return self.path / RECORDS

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    def runtime_dir(self) -> Path:
        """A short folder under /tmp for Ray's temp files and the driver's socket."""
        digest = hashlib.sha256(str(self.path).encode()).hexdigest()[:8]
        return Path(tempfile.gettempdir()) / f"cv-{os.getuid()}-{digest}"

    @property
    def socket_path(self) -> Path:
        return self.runtime_dir() / "driver.sock"

    def create(self, runtime: bool = False) -> None:
        """Make the folders (with ``runtime``, the one under /tmp too), private to this user
        (0700) however the umask is set."""
        folders = [self.path, self.logs] + ([self.runtime_dir()] if runtime else [])
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
            os.chmod(folder, 0o700)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive for ``caviar up`` / ``caviar down``: two at once would start two heads."""
        self.create()
        fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def read(self) -> ServiceRecords | None:
        try:
            return ServiceRecords.from_json(self.records_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError, KeyError):  # a file cut short: treat as stale
            return ServiceRecords()

    def write(self, records: ServiceRecords) -> None:
        write_private(self.records_path, records.to_json())

    def remove_records(self) -> None:
        self.records_path.unlink(missing_ok=True)

    def token(self) -> str:
        """The cluster's token, created (0600) on first use and kept for later ``caviar up``."""
        path = self.path / TOKEN
        if path.is_file():
            existing = path.read_text(encoding="utf-8").strip()
            if existing:
                return existing
        value = secrets.token_hex(32)
        write_private(path, value + "\n")
        return value

    def log_path(self, name: str) -> Path:
        return self.logs / f"{name}.log"


def default_home() -> Path:
    given = os.environ.get(HOME_ENV, "").strip()
    return Path(given) if given else Path.home() / ".caviar"


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, readable by this user only (0600)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def open_log(path: Path) -> int:
    """A log file descriptor for a child's output, appended to, private (0600)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.chmod(path, 0o600)
    return fd


# --- processes ---------------------------------------------------------------------------


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot; None if it does not exist (or no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])  # field 22 overall


def process_alive(pid: int, ticks: int | None) -> bool:
    if Path("/proc").is_dir():
        now = start_ticks(pid)
        if now is None or (ticks is not None and now != ticks):
            return False
        return not _zombie(pid)
    try:  # no /proc (macOS): the pid exists; reuse cannot be told apart here
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: not ours any more
        return False
    return True


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2 :].split()[0] == "Z"


MARKER_ENV = "CAVIAR_SERVICE_ID"  # "<state folder>:<service>", in every service's environment


def marker(state_path: Path, name: str) -> str:
    return f"{state_path}:{name}"


def marked_processes(prefix: str) -> list[int]:
    """This user's processes whose environment says they belong to a service of ours.

    Every service starts with ``CAVIAR_SERVICE_ID=<state folder>:<name>`` in its environment,
    and everything it starts inherits it: Ray's raylet, agents and worker processes (which
    set their own process group and rename themselves ``ray::IDLE``, so neither the group nor
    the command line finds them), MLflow's server workers. ``prefix`` is a whole marker, or
    ``<state folder>:`` for all of them. A process started by someone else never has it."""
    needle = f"{MARKER_ENV}={prefix}".encode()
    whole = not prefix.endswith(":")  # a service's marker, or every marker of the folder
    found = []
    for pid, environ in _own_processes("environ"):
        items = environ.split(b"\0")
        hit = needle in items if whole else any(item.startswith(needle) for item in items)
        if hit and not _zombie(pid):
            found.append(pid)
    return found


def group_members(pgid: int, not_before: int | None, marked: str | None = None) -> list[int]:
    """This user's live processes in process group ``pgid`` whose leader is gone, that started
    no earlier than the recorded leader (so a group id reused by a later program after ours
    ended and was reaped is not taken for ours while its own leader lives) and, with
    ``marked``, that carry that service's marker in their environment (what the service
    started, never a stranger's process that happens to sit in a group of that id).

    What a service leaves behind when only its leader dies: MLflow's server is a leader
    whose uvicorn child serves the UI and holds the port; killed alone, the leader leaves
    the child running, reparented, in the service's group."""
    if not Path("/proc").is_dir() or process_alive(pgid, None):
        return []  # the leader lives: it is signalled as a live record, or it is not ours
    found = []
    for pid, stat in _own_processes("stat"):
        text = stat.decode(errors="replace")
        fields = text[text.rindex(")") + 2 :].split()
        if fields[0] == "Z" or int(fields[2]) != pgid:
            continue  # a zombie holds nothing (and this machine's init may never reap it)
        if not_before is not None and int(fields[19]) < not_before:
            continue
        if marked is not None and not _carries(pid, marked):
            continue
        found.append(pid)
    return found


def _carries(pid: int, whole_marker: str) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"{MARKER_ENV}={whole_marker}".encode() in environ.split(b"\0")


def _own_processes(part: str) -> Iterator[tuple[int, bytes]]:
    """``(pid, /proc/PID/<part>)`` for every process of this user but this one."""
    proc = Path("/proc")
    if not proc.is_dir():
        return
    uid, me = os.getuid(), os.getpid()
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
            yield int(entry.name), (entry / part).read_bytes()
        except OSError:
            continue


def since(started_at: float) -> str:
    """``started_at`` as local time, for ``caviar ps``."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started_at))


# --- the boot the records belong to ------------------------------------------------------


def boot_id() -> str | None:
    """This boot's id (Linux); None where there is none to read."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def same_boot(records: ServiceRecords) -> bool:
    """Whether ``records`` were written since this machine last booted (records without a
    boot id, or on a system without one, are taken as current)."""
    recorded = records.settings.get("boot_id")
    return recorded is None or recorded == boot_id()
