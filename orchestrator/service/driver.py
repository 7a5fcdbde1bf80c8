"""The service's long-lived sweep driver: ``caviar run`` sends it a spec, it runs the sweep.

Started by ``caviar up`` (``python -m orchestrator.service.driver --socket PATH``) with the
cluster's address, token and MLflow server in its environment. It imports everything a sweep
needs and joins Ray once (``orchestrator/engine/warm.py``), then serves its Unix socket: one
sweep at a time, on the main thread, through the same ``run_sweep`` and summary as a local
``caviar run``; the terminal output goes back to the client as it is written (``wire.py``).
A second sweep waits its turn (its client is told so); pings are answered at once, also
while a sweep runs. Between sweeps the driver removes whatever the last one's Tune run left
holding CPUs and starts the next one's trial workers (``orchestrator/engine/warm.py``).

Signals: the client's Ctrl-C (or the client going away) becomes a SIGINT on this process's
main thread, so the sweep ends exactly as an interrupted local one (journal, MLflow runs
KILLED, resumable). SIGTERM (``caviar down``) interrupts a running sweep the same way and then
ends the driver.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from orchestrator import speedups
from orchestrator.environment import apply_environment_defaults
from orchestrator.service import identity, wire

log = logging.getLogger("caviar.driver")

UI_ENV = "CAVIAR_MLFLOW_UI"  # the service's MLflow server, for the summary's links


class ClientStream:
    """A text stream whose writes go to the client (``run_sweep``'s ``stream``)."""

    def __init__(self, conn: socket.socket, tty: bool, err: bool = False) -> None:
        self.conn, self.tty, self.err = conn, tty, err
        self.lock = threading.Lock()
        self.gone = False  # the client left: the sweep goes on (interrupted) without output

    def write(self, text: str) -> int:
        if text and not self.gone:
            with self.lock:
                try:
                    wire.send(self.conn, {"out": text, "err": self.err})
                except OSError:
                    self.gone = True
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return self.tty


class Driver:
    def __init__(self, socket_path: Path, home: Path) -> None:
        self.socket_path = socket_path
        self.home = home
        self.running = False  # a sweep is under way on the main thread
        self.interrupted = False
        self.stopping = False  # SIGTERM: end after the current sweep's clean-up
        self.drawing = False  # a finished sweep's report plots are being drawn
        self.queue: queue.Queue[tuple[socket.socket, wire.Reader, dict[str, Any]]] = queue.Queue()

    # --- start -----------------------------------------------------------------------

    def start(self) -> socket.socket:
        from orchestrator.engine import warm
        from orchestrator.store.uri import is_sqlite

        started = time.monotonic()
        warm.import_sweep_modules()  # while the head starts: caviar up starts both at once
        store = os.environ.get("MLFLOW_TRACKING_URI", "")
        if is_sqlite(store):  # the server's own file: artifacts where it keeps them
            from orchestrator.store.local_store import open_store

            open_store(store, self.home / "mlflow")
        warm.connect()
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()  # a dead driver's socket
        old_umask = os.umask(0o177)  # the socket is created 0600
        try:
            server.bind(str(self.socket_path))
        finally:
            os.umask(old_umask)
        server.listen(8)
        asked = warm.prestart_workers()
        if speedups.enabled():  # as in cli.py: the interpreter's collector, tuned
            gc.freeze()  # what the imports made lives for good: no collection walks it again
        log.warning(
            "caviar-driver: ready in %.1f s (pid %d, %d trial workers asked for)",
            time.monotonic() - started,
            os.getpid(),
            asked,
        )
        signal.signal(signal.SIGTERM, self._on_sigterm)
        return server

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True
        if self.drawing:  # finish the plots; the serve loop then ends
            return
        if self.running and not self.interrupted:
            self.interrupted = True
            raise KeyboardInterrupt(f"signal {signum}")
        if not self.running:
            raise SystemExit(0)

    # --- serve -----------------------------------------------------------------------

    def serve(self, server: socket.socket) -> None:
        """Sweeps on the main thread, one at a time, in the order they came; a thread takes
        every connection and answers pings at once, also while a sweep runs."""
        threading.Thread(
            target=self._accept, args=(server,), name="caviar-accept", daemon=True
        ).start()
        while not self.stopping:
            conn, reader, run = self.queue.get()
            with conn:
                self._serve_run(conn, reader, run)

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:  # the server socket was closed: the driver is ending
                return
            threading.Thread(
                target=self._first_request, args=(conn,), name="caviar-request", daemon=True
            ).start()

    def _first_request(self, conn: socket.socket) -> None:
        try:
            reader = wire.Reader(conn)
            request = reader.next()
            if request is not None and request.get("run") and isinstance(request["run"], dict):
                if self.running or not self.queue.empty():
                    note = "caviar: the service is running another sweep; this one starts next\n"
                    wire.send(conn, {"out": note, "err": True})
                self.queue.put((conn, reader, request["run"]))
                return  # the main thread answers and closes it
            if request is not None and request.get("ping"):
                # "caviar": the code this driver runs; a client of other code runs on its own
                answer = {"ok": True, "pid": os.getpid(), "running": self.running}
                wire.send(conn, {**answer, "caviar": identity.code_identity()})
            elif request is not None and request.get("prestart"):  # caviar up, nodes joined
                from orchestrator.engine import warm

                asked = 0 if self.running else warm.prestart_workers()
                wire.send(conn, {"ok": True, "asked": asked})
            elif request is not None:
                wire.send(conn, {"out": "caviar: error: unknown request\n", "err": True})
                wire.send(conn, {"exit": 2})
        except (OSError, ValueError) as error:  # a client that went away or spoke nonsense
            log.warning("caviar-driver: dropped a client (%s)", error)
        conn.close()

    def _serve_run(self, conn: socket.socket, reader: wire.Reader, run: dict[str, Any]) -> None:
        code, draw_report = self._run(conn, reader, run)
        with contextlib.suppress(OSError):
            wire.send(conn, {"exit": code})
        if draw_report is not None:
            # The client has its summary; the plots follow into MLflow. A SIGTERM meanwhile
            # (caviar down) waits for them: see _on_sigterm.
            self.drawing = True
            try:
                draw_report(log.warning)  # the client has gone: a failure goes to the log
            finally:
                self.drawing = False
        from orchestrator.engine import warm

        released = warm.release_sweep_resources()  # what Tune left behind holds CPUs
        if released:
            log.warning("caviar-driver: removed %d placement group(s) left by the sweep", released)
        warm.prestart_workers()  # the sweep's actors ended with it: the next one's, now

    def _run(
        self, conn: socket.socket, reader: wire.Reader, run: dict[str, Any]
    ) -> tuple[int, Callable[..., None] | None]:
        out = ClientStream(conn, bool(run.get("tty")))
        err = ClientStream(conn, bool(run.get("tty")), err=True)
        self.interrupted = False
        watcher = threading.Thread(
            target=self._watch, args=(reader, out), name="caviar-client", daemon=True
        )
        self.running = True
        watcher.start()
        try:
            with _in_client_place(run):
                return _run_sweep(run, out, err, self.home)
        except KeyboardInterrupt:  # before the sweep began: nothing to save
            err.write("\ncaviar: interrupted\n")
            return 130, None
        finally:
            self.running = False

    def _watch(self, reader: wire.Reader, out: ClientStream) -> None:
        """The client's Ctrl-C, or its going away, interrupts the sweep (once)."""
        while True:
            try:
                message = reader.next()
            except (OSError, ValueError):
                message = None
            if message is None:
                out.gone = True
            if not self.running:
                return
            if (message is None or message.get("interrupt")) and not self.interrupted:
                self.interrupted = True
                signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
            if message is None:
                return


@contextlib.contextmanager
def _in_client_place(run: dict[str, Any]) -> Iterator[None]:
    """The client's working folder and forwarded variables, for one sweep."""
    before_cwd = os.getcwd()
    before_env = {name: os.environ.get(name) for name in wire.FORWARDED_ENV}
    try:
        os.chdir(str(run["cwd"]))
        for name in wire.FORWARDED_ENV:
            value = (run.get("env") or {}).get(name)
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = str(value)
        yield
    finally:
        os.chdir(before_cwd)
        for name, value in before_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _run_sweep(
    run: dict[str, Any], out: ClientStream, err: ClientStream, home: Path | None = None
) -> tuple[int, Callable[..., None] | None]:
    """``caviar run SPEC`` as the CLI runs it, with output to the client; also what draws
    the report's plots, left until the client has its answer. A trial no node of the
    service fits is refused first, as a local run refuses it (``fixed_nodes.py``)."""
    from orchestrator.engine.run import run_sweep
    from orchestrator.errors import CaviarError, SweepInterrupted
    from orchestrator.report.summary import format_summary
    from orchestrator.service.fixed_nodes import refuse_what_never_fits
    from orchestrator.spec import load_spec
    from orchestrator.spec.data import check_data_files

    spec_path = Path(str(run["spec"]))
    try:
        spec = load_spec(spec_path)
        check_data_files(spec.data, spec_path.parent)
        refuse_what_never_fits(
            spec.resources.cpus_per_trial, spec.resources.gpus_per_trial, _workers(home)
        )
        result = run_sweep(
            spec,
            spec_path.read_text(encoding="utf-8"),
            spec_path.name,
            stream=out,
            spec_dir=spec_path.parent,
            resume=bool(run.get("resume")),
            draw_later=True,
        )
    except SweepInterrupted as interrupted:
        err.write(f"caviar: {interrupted}\n")
        return interrupted.exit_code, None
    except CaviarError as error:
        err.write(f"caviar: error: {error}\n")
        return error.exit_code, None
    except KeyboardInterrupt:
        raise
    except Exception:  # a bug: its traceback to the client, and the driver serves on
        err.write(traceback.format_exc())
        return 1, None
    ui = os.environ.get(UI_ENV)
    if ui:  # the runs are in the store the service's server shows: its UI, not `mlflow ui`
        result.tracking_uri = ui
    out.write(format_summary(result) + "\n")
    return (0 if result.best is not None else 1), result.draw_report


def _workers(home: Path | None) -> int | None:
    """How many worker nodes ``caviar up`` started, as its state folder records."""
    from orchestrator.service.state import StateDir

    records = StateDir(home).read() if home is not None else None
    workers = records.settings.get("workers") if records else None
    return int(workers) if isinstance(workers, int) else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.service.driver")
    parser.add_argument("--socket", type=Path, required=True, help="the Unix socket to serve")
    parser.add_argument("--home", type=Path, required=True, help="the service's state folder")
    args = parser.parse_args(argv)
    identity.code_identity()  # the code on disk now, before the sweep's modules are imported
    apply_environment_defaults()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    driver = Driver(args.socket, args.home)
    server = driver.start()
    try:
        driver.serve(server)
    except SystemExit:
        pass
    finally:
        server.close()
        with contextlib.suppress(FileNotFoundError):
            args.socket.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
