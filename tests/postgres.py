"""A throwaway PostgreSQL server for tests: its own data folder, one loopback port, always stopped.

``postgres_server()`` runs ``initdb`` into a fresh temporary folder, starts the server with
``pg_ctl`` listening on 127.0.0.1 only (its Unix socket inside that folder, so it cannot meet
another server's), creates a password-protected role and a database it owns, and on exit stops
the server with ``pg_ctl stop -m immediate``, kills whatever of it is left and deletes the
folder, also when the test body raised. Every connection, the superuser's included, needs a
password (scram-sha-256), the same as a server reached over a network.

PostgreSQL refuses to run as root; as root the server runs as the ``postgres`` system user
(which Debian's ``postgresql`` package creates), through ``runuser``.

Where no PostgreSQL binaries are found the caller gets ``missing()``'s reason and skips;
``CAVIAR_TEST_REQUIRE_POSTGRES=1`` (set by ``.ci/run``) turns that skip into a failure.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from ports import free_ports

PG_BIN_ENV = "CAVIAR_PG_BIN"  # a folder holding initdb, pg_ctl and postgres; found if unset
REQUIRE_ENV = "CAVIAR_TEST_REQUIRE_POSTGRES"
TOOLS = ("initdb", "pg_ctl", "postgres")
INSTALL_HINT = (
    "install PostgreSQL's server (Debian/Ubuntu: apt-get install postgresql; .ci/run does so "
    f"as root) or point {PG_BIN_ENV} at the folder holding initdb, pg_ctl and postgres"
)
START_ATTEMPTS = 3  # a port taken between choosing it and the server binding it: try another
SERVER_USER = "postgres"  # the system user the server runs as when the tests run as root
SBIN = "/usr/sbin:/sbin"  # runuser's home; not always on a root shell's PATH


def _has_tools(folder: Path) -> bool:
    return all(os.access(folder / tool, os.X_OK) for tool in TOOLS)


def _version_key(folder: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", folder.parent.name)) or (0,)


def find_bin_dir() -> Path | None:
    """The folder of the server's binaries: $CAVIAR_PG_BIN, PATH, then the newest Debian one."""
    given = os.environ.get(PG_BIN_ENV, "").strip()
    if given:
        return Path(given) if _has_tools(Path(given)) else None
    on_path = shutil.which("pg_ctl")
    if on_path and _has_tools(Path(on_path).resolve().parent):
        return Path(on_path).resolve().parent
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    return next((folder for folder in debian if _has_tools(folder)), None)


def _runuser() -> str | None:
    return shutil.which("runuser", path=os.pathsep.join([os.environ.get("PATH", ""), SBIN]))


def missing() -> str | None:
    """Why no server can be started here (None when it can): what is absent and how to fix it."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        where = os.environ.get(PG_BIN_ENV) or "PATH or /usr/lib/postgresql/*/bin"
        return f"no PostgreSQL server binaries ({', '.join(TOOLS)}) in {where}: {INSTALL_HINT}"
    if os.geteuid() == 0:
        if _runuser() is None:
            return "running as root and runuser (util-linux) is missing: PostgreSQL cannot run"
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            return (
                f"running as root and there is no '{SERVER_USER}' system user to run PostgreSQL "
                "as (Debian's postgresql package creates it)"
            )
    return None


def required() -> bool:
    """Whether a missing PostgreSQL is a failure (CI) rather than a skip (a developer's box)."""
    return os.environ.get(REQUIRE_ENV, "").strip() not in ("", "0", "false", "no")


def unavailable() -> str | None:
    """``missing()``, except that where PostgreSQL is required its absence fails the test."""
    reason = missing()
    if reason is not None and required():
        pytest.fail(f"{REQUIRE_ENV} is set but PostgreSQL cannot run here: {reason}")
    return reason


def _password() -> str:
    # URL-special characters on purpose: the URI built from POSTGRES_* must quote them.
    return secrets.token_urlsafe(18) + "@:/%?#"


@dataclass
class PostgresServer:
    """One running server and the role and database created for the test."""

    root: Path
    bin_dir: Path
    user: str = "mlflow"  # the compose file's defaults for POSTGRES_USER and POSTGRES_DB
    database: str = "mlflow"
    password: str = field(default_factory=_password, repr=False)
    admin_password: str = field(default_factory=lambda: secrets.token_hex(16), repr=False)
    port: int = 0
    postmaster_pid: int | None = None

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    def service_env(self) -> dict[str, str]:
        """The variables docker-compose.yml gives the mlflow service, pointing here."""
        return {
            "POSTGRES_HOST": "127.0.0.1",
            "POSTGRES_PORT": str(self.port),
            "POSTGRES_USER": self.user,
            "POSTGRES_PASSWORD": self.password,
            "POSTGRES_DB": self.database,
        }

    def _as_server_user(self, argv: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return argv
        return [_runuser() or "runuser", "-u", SERVER_USER, "--", *argv]

    def _run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self._as_server_user([str(self.bin_dir / argv[0]), *argv[1:]]),
            cwd=self.root,
            env={"PATH": "/usr/bin:/bin", "LC_ALL": "C", "LANG": "C"},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self) -> None:
        """initdb, start on a free loopback port, create the role and its database."""
        self.socket_dir.mkdir()
        if os.geteuid() == 0:
            entry = pwd.getpwnam(SERVER_USER)
            for path in (self.root, self.socket_dir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        os.chmod(self.root, 0o700)
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.admin_password + "\n")
        if os.geteuid() == 0:
            os.chown(pwfile, pwd.getpwnam(SERVER_USER).pw_uid, -1)
        pwfile.chmod(0o600)
        init = self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", f"--pwfile={pwfile}",
            "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        pwfile.unlink()
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed ({init.returncode}):\n{init.stdout}{init.stderr}")
        failures = []
        for attempt in range(1, START_ATTEMPTS + 1):
            (self.port,) = free_ports(1)
            self._configure()
            started = self._run(
                "pg_ctl", "start", "-D", str(self.data), "-l", str(self.log_path), "-w",
                "-t", "60",
            )  # fmt: skip
            if started.returncode == 0:
                break
            failures.append(f"attempt {attempt} (port {self.port}):\n{started.stdout}{self.log()}")
            self._kill_leftovers()
        else:
            raise RuntimeError("PostgreSQL never started:\n" + "\n".join(failures))
        self.postmaster_pid = int((self.data / "postmaster.pid").read_text().split()[0])
        self._create_role_and_database()

    def _configure(self) -> None:
        """Loopback only, this folder's socket; durability off (the data dies with the test)."""
        settings = {
            "port": str(self.port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.socket_dir}'",
            "shared_buffers": "'32MB'",
            "max_connections": "50",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
        }
        lines = "".join(f"{name} = {value}\n" for name, value in settings.items())
        (self.data / "postgresql.auto.conf").write_text(lines)

    def _create_role_and_database(self) -> None:
        import psycopg2
        from psycopg2 import sql

        admin = self.connect(user="postgres", password=self.admin_password, dbname="postgres")
        admin.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        try:
            with admin.cursor() as cursor:
                cursor.execute(
                    sql.SQL("CREATE ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(self.user)),
                    (self.password,),
                )
                cursor.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(self.database), sql.Identifier(self.user)
                    )
                )
        except psycopg2.Error as error:
            raise RuntimeError(f"creating the test role and database failed: {error}") from None
        finally:
            admin.close()

    def connect(self, **overrides: Any) -> Any:
        """A psycopg2 connection over TCP (as the test role unless told otherwise)."""
        import psycopg2

        options = {
            "host": "127.0.0.1",
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "dbname": self.database,
            "connect_timeout": 10,
            **overrides,
        }
        return psycopg2.connect(**options)

    def query(self, statement: str, *args: Any) -> list[tuple[Any, ...]]:
        connection = self.connect()
        try:
            with connection.cursor() as cursor:
                cursor.execute(statement, args)
                return list(cursor.fetchall())
        finally:
            connection.close()

    def log(self, tail: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def stop(self) -> None:
        """``pg_ctl stop -m immediate``, then SIGKILL the postmaster and its children if any."""
        if (self.data / "postmaster.pid").exists():
            try:
                self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w",
                          "-t", "30", timeout=60)  # fmt: skip
            except subprocess.TimeoutExpired:
                pass
        self._kill_leftovers()

    def _kill_leftovers(self) -> None:
        """The postmaster (by its pid file or its -D argument) and every process it forked."""
        parents = set(_pids_naming(self.data))
        pid_file = self.data / "postmaster.pid"
        if self.postmaster_pid is not None:
            parents.add(self.postmaster_pid)
        try:
            parents.add(int(pid_file.read_text().split()[0]))
        except (OSError, ValueError, IndexError):
            pass
        for _ in range(50):
            victims = parents | _children_of(parents)
            alive = [pid for pid in victims if _is_alive(pid)]
            if not alive:
                return
            for pid in alive:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)


def _pids_naming(path: Path) -> list[int]:
    marker = str(path).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _children_of(parents: set[int]) -> set[int]:
    children = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # field 4; the name may hold spaces
        if ppid in parents:
            children.add(int(entry.name))
    return children


def _is_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is gone, waiting to be reaped


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A started server; stopped and its folder deleted however the block ends."""
    bin_dir = find_bin_dir()
    if bin_dir is None or missing() is not None:
        raise RuntimeError(missing())
    root = Path(tempfile.mkdtemp(prefix="cvr-pg-", dir="/tmp"))  # short: the socket lives here
    server = PostgresServer(root, bin_dir)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
