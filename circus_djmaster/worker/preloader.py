"""``python -m circus_djmaster preloader --settings FILE``: import the application once and
fork workers on demand (``spawn = "fork"``).

The seed (delayed_job_master) preloads the application in its master and forks each
worker from it. Here circus must own every worker process, so the pieces are
(docs/master.md, "Fork mode"):

* **the preloader** (this module), one per settings file and code generation, a circus
  watcher of its own (``djmaster-preloader``): it loads the settings, imports ``app``
  and the worker's own modules (psycopg included) with the garbage collector off,
  freezes the result (``gc.freeze()``: collections in the workers never touch those
  pages, so they stay shared copy-on-write), checks that the import started no thread
  (forking a process that runs threads is unsafe: a lock another thread held stays
  locked in the child), and then forks a worker for each launcher that asks, on a Unix
  socket in the user's private folder (contracts/preloader.py). It holds no database
  connection and runs no thread of its own; ``before_fork(preloader, target)`` runs
  before each fork, and the worker runs ``after_fork`` as an exec-mode worker does;
* **the launcher** (launcher.py), what circus starts for a worker watcher: it passes
  its stdio and a control socket, and stands for the forked worker towards circus and
  the master (signals relayed, the worker's exit code made its own);
* **the worker**, this process' child: a worker as main.py runs it (:func:`main.work`),
  going by its launcher's pid.

The preloader reaps its workers and tells each launcher how its worker ended (a kill
or a crash the worker could not report itself). When a launcher's connection closes
(the launcher died) it kills that launcher's worker at once.

Generations: TERM, INT or USR2 (the master's USR2, or the master seeing the settings
file change), or a change of the settings file seen before a fork, make it *old*: it
stops listening (`` [OLD]`` in its title), and exits 0 once its workers are gone (the
after_reap hook lowers the watcher's target; the master raises it for a new generation,
which imports the new code). A second TERM or INT, or QUIT, exits at once (its workers
go on, each with its launcher). A preloader that cannot load the settings or import
the application exits 78, like an exec-mode worker, and leaves a note for the launchers
waiting on it.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from circus_djmaster.common import logs
from circus_djmaster.config.settings import Settings, load_settings
from circus_djmaster.config.targets import ForkTarget
from circus_djmaster.contracts import preloader as rendezvous
from circus_djmaster.contracts import titles
from circus_djmaster.contracts.exit_codes import WorkerExit
from circus_djmaster.contracts.watchers import watcher_name
from circus_djmaster.exceptions import PreloadError, SettingsError
from circus_djmaster.worker import early_signals, launcher_link, main
from circus_djmaster.worker.callbacks import PRELOADER_CALLBACKS, WorkerCallbacks

__all__ = ["Preloader", "run", "threads_problem"]

log = logging.getLogger("circus_djmaster.preloader")

#: How often the preloader looks at its settings file (and wakes at least).
CHECK_EVERY = 1.0
#: Connections waiting to be accepted.
BACKLOG = 128

_SIGNALS = (*early_signals.SIGNALS, signal.SIGCHLD)


def run(settings_path: str) -> int:
    """The preloader's whole life; returns its exit code (0 retired, 78 configuration or
    import error)."""
    early_signals.install()  # a TERM while the application imports is not fatal
    # No collection until the application's objects are frozen: a collection would
    # free objects in the middle of pages the workers then share.
    gc.disable()
    settings_mtime = _mtime_ns(settings_path)
    folder = rendezvous.folder_for(settings_path)
    try:
        rendezvous.private_folder(folder)
        settings = load_settings(settings_path)
    except (SettingsError, OSError) as exc:
        print(f"djmaster preloader: {exc}", file=sys.stderr)
        with contextlib.suppress(OSError):
            rendezvous.write_failure(folder, os.getpid(), str(exc))
        return WorkerExit.CONFIG_ERROR
    rendezvous.clear_failure(folder)
    logs.configure(
        settings.log_file,
        settings.log_level,
        prefix="preloader ",
        log_format=settings.log_format,
        context={"role": "preloader"},
    )
    titles.set_title(titles.preloader_title(settings.path))
    started = time.monotonic()
    try:
        callbacks = main.preload(settings, PRELOADER_CALLBACKS)
        problem = threads_problem()
        if problem is not None:
            raise PreloadError(problem)
    except PreloadError as exc:
        log.error("cannot preload, no worker of a fork-mode group can start: %s", exc)
        rendezvous.write_failure(folder, os.getpid(), str(exc))
        return WorkerExit.CONFIG_ERROR
    gc.freeze()
    gc.enable()  # new objects only: the frozen ones are never examined again
    log.info(
        "application %s imported in %.0f ms (%d objects frozen)",
        settings.app or "(none)",
        (time.monotonic() - started) * 1000,
        gc.get_freeze_count(),
    )
    return Preloader(settings, settings_mtime, folder, callbacks).serve()


def threads_problem() -> str | None:
    """Why this process must not fork: the Python threads it runs besides the main
    one, with the remedy; None when it runs none."""
    others = [thread for thread in threading.enumerate() if thread is not threading.main_thread()]
    if not others:
        return None
    names = ", ".join(sorted(thread.name for thread in others))
    return (
        f"{len(others)} thread(s) run in the preloader after the import ({names}): forking a "
        "process that runs threads is unsafe (a lock another thread holds stays locked in "
        "the worker). Start them in an after_fork callback (each worker then has its own), "
        'or set spawn = "exec" for the groups of this application'
    )


class Preloader:
    """One preloader generation: its socket, its workers, its signals."""

    def __init__(
        self,
        settings: Settings,
        settings_mtime: int | None,
        folder: str,
        callbacks: WorkerCallbacks,
    ) -> None:
        self.settings = settings
        self.pid = os.getpid()
        self.folder = folder
        self.callbacks = callbacks
        self.old = False
        self._settings_mtime = settings_mtime
        self._socket_path = rendezvous.generation_socket(folder, self.pid)
        self._listener: socket.socket | None = None
        #: launcher connections by fd; a connection's worker, once forked
        self._connections: dict[int, socket.socket] = {}
        self._worker_of: dict[int, int] = {}  # connection fd -> worker pid
        self._children: dict[int, socket.socket | None] = {}  # worker pid -> its launcher
        self._signals: collections.deque[int] = collections.deque()
        self._term_received = False
        self._quit = False
        self._warned_sockets = False
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        self._poll = select.poll()

    # --- signals: handlers only record -----------------------------------------------

    def _record(self, signum: int, _frame: object) -> None:
        self._signals.append(signum)

    def _install_signals(self) -> None:
        for handled in _SIGNALS:
            signal.signal(handled, self._record)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        self._signals.extend(early_signals.take())

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.popleft()
            if signum == signal.SIGCHLD:
                self._reap()
            elif signum == signal.SIGUSR1:
                logs.reopen()
                log.info("USR1: log reopened")
            elif signum == signal.SIGQUIT or (
                signum in (signal.SIGTERM, signal.SIGINT) and self._term_received
            ):
                log.info("%s: exiting now; the workers go on", signal.Signals(signum).name)
                self._quit = True
            else:
                if signum in (signal.SIGTERM, signal.SIGINT):
                    self._term_received = True
                self.retire(f"{signal.Signals(signum).name}")

    # --- generations ------------------------------------------------------------------

    def retire(self, why: str) -> None:
        """Stop forking: the next generation forks new workers; exit once ours are gone."""
        if self.old:
            return
        self.old = True
        if self._listener is not None:
            self._poll.unregister(self._listener.fileno())
            self._listener.close()
            self._listener = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._socket_path)
        titles.set_title(titles.preloader_title(self.settings.path, old=True))
        log.info(
            "%s: old generation, forking no more; exiting once its %d worker(s) are gone",
            why,
            len(self._children),
        )

    def _stale(self) -> bool:
        if _mtime_ns(self.settings.path) != self._settings_mtime:
            self.retire(f"{self.settings.path} changed")
        return self.old

    # --- the loop ---------------------------------------------------------------------

    def serve(self) -> int:
        """Listen and fork until retired and every worker is gone; the exit code."""
        self._install_signals()
        self._poll.register(self._wake_r, select.POLLIN)
        self._listen()
        next_check = time.monotonic() + CHECK_EVERY
        while True:
            self._handle_signals()
            if self._quit or (self.old and not self._children):
                break
            for fd, _events in self._wait(max(0.0, next_check - time.monotonic())):
                if fd == self._wake_r:
                    _drain(fd)
                elif self._listener is not None and fd == self._listener.fileno():
                    self._accept()
                elif fd in self._connections:
                    self._on_message(self._connections[fd])
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + CHECK_EVERY
                self._stale()
        log.info("preloader exits")
        return WorkerExit.RETIRED

    def _wait(self, timeout: float) -> list[tuple[int, int]]:
        try:
            return self._poll.poll(timeout * 1000)
        except InterruptedError:
            return []

    def _listen(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._socket_path)  # left by a dead process that had our pid
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        listener.bind(self._socket_path)
        os.chmod(self._socket_path, 0o600)
        listener.listen(BACKLOG)
        listener.setblocking(False)
        self._listener = listener
        self._poll.register(listener.fileno(), select.POLLIN)
        # Swap the link to this generation atomically: a launcher connects to the old
        # generation or to this one, never to nothing once one was there.
        link = os.path.join(self.folder, f".{rendezvous.CURRENT}.{self.pid}")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(link)
        os.symlink(os.path.basename(self._socket_path), link)
        os.replace(link, rendezvous.current_link(self.folder))
        log.info(
            "ready: forking workers of %s (generation %d)",
            ", ".join(group.name for group in self.settings.workers if group.spawn == "fork"),
            self.pid,
        )

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                connection, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            connection.setblocking(True)
            self._connections[connection.fileno()] = connection
            self._poll.register(connection.fileno(), select.POLLIN)

    def _drop(self, connection: socket.socket) -> None:
        fd = connection.fileno()
        self._poll.unregister(fd)
        del self._connections[fd]
        worker = self._worker_of.pop(fd, None)
        if worker is not None and worker in self._children:
            self._children[worker] = None
        connection.close()

    def _on_message(self, connection: socket.socket) -> None:
        fd = connection.fileno()
        try:
            kind, text, fds = rendezvous.receive(connection)
        except OSError as exc:
            log.warning("a launcher's message could not be read (%s); closing it", exc)
            kind, text, fds = None, "", []
        if kind is None:
            # The launcher is gone. Its worker must not run on unseen: circus and the
            # master count it dead and release its jobs.
            worker = self._worker_of.get(fd)
            if worker is not None and worker in self._children:
                log.warning("launcher of worker pid %d is gone: killing the worker", worker)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker, signal.SIGKILL)
            self._drop(connection)
            return
        if kind != "fork" or fd in self._worker_of or len(fds) != 4:
            _close_all(fds)
            self._answer(connection, "refused", f"unexpected message {kind!r}")
            self._drop(connection)
            return
        self._fork(connection, text, fds)

    def _answer(
        self, connection: socket.socket, kind: str, text: str, fds: Sequence[int] = ()
    ) -> None:
        with contextlib.suppress(OSError):
            rendezvous.send(connection, kind, text, fds)

    # --- forking ----------------------------------------------------------------------

    def _fork(self, connection: socket.socket, request: str, fds: list[int]) -> None:
        try:
            target = self._target(request)
        except (SettingsError, ValueError, TypeError) as exc:
            _close_all(fds)
            self._answer(connection, "refused", str(exc))
            self._drop(connection)
            return
        if self._stale():
            _close_all(fds)
            self._answer(connection, "retry", "this preloader generation is old")
            self._drop(connection)
            return
        self.callbacks.call("before_fork", self, target)
        problem = threads_problem()
        if problem is not None:
            _close_all(fds)
            log.error("not forking a worker for %s: %s", target.watcher, problem)
            self._answer(connection, "refused", problem)
            self._drop(connection)
            return
        self._warn_sockets(fds)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        # Signals wait until the child has put its own handlers in place.
        mask: set[int] = set(signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS))
        try:
            pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            _close_all(fds)
            log.error("fork failed for %s: %s", target.watcher, exc)
            self._answer(connection, "retry", f"fork failed: {exc}")
            self._drop(connection)
            return
        if pid == 0:
            self._child(target, fds, mask)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        _close_all(fds)
        self._children[pid] = connection
        self._worker_of[connection.fileno()] = pid
        pidfd = _pidfd(pid)
        self._answer(connection, "forked", str(pid), [pidfd] if pidfd is not None else [])
        if pidfd is not None:
            os.close(pidfd)
        log.debug(
            "forked worker pid %d for %s (launcher %s)", pid, target.watcher, target.launcher_pid
        )

    def _target(self, request: str) -> ForkTarget:
        """The target of ``fork GROUP DATABASE LAUNCHER_PID WID`` (WID: circus' wid of
        the launcher, ``-`` for none); SettingsError for a group or database the
        settings do not have, ValueError for anything else wrong."""
        fields = request.split(" ")
        if (
            len(fields) != 4
            or not (fields[2].isascii() and fields[2].isdigit() and int(fields[2]) > 1)
            or not (fields[3] == "-" or (fields[3].isascii() and fields[3].isdigit()))
        ):
            raise ValueError(f"a fork request must be GROUP DATABASE PID WID, not {request!r}")
        group = self.settings.group(fields[0])
        database = self.settings.database(fields[1])
        launcher = int(fields[2])
        wid = None if fields[3] == "-" else int(fields[3])
        if group.spawn != "fork":
            raise ValueError(
                f'group {group.name} has spawn = "{group.spawn}" in {self.settings.path}'
            )
        return ForkTarget(
            group, database.name, watcher_name(group.name, database.name), 1, launcher, wid
        )

    def _child(self, target: ForkTarget, fds: list[int], mask: set[int]) -> NoReturn:
        """The forked worker: never returns into the preloader."""
        code: int = WorkerExit.CRASHED
        try:
            early_signals.install()  # recorded; the worker replays them
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.set_wakeup_fd(-1)
            self._signals.clear()
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            for connection in self._connections.values():
                connection.close()
            if self._listener is not None:
                self._listener.close()
            os.close(self._wake_r)
            os.close(self._wake_w)
            stdin, stdout, stderr, control = fds
            for fd, target_fd in ((stdin, 0), (stdout, 1), (stderr, 2)):
                os.dup2(fd, target_fd)
            for fd in {stdin, stdout, stderr} - {0, 1, 2}:
                os.close(fd)
            launcher_link.install(control)
            group = target.group
            database = self.settings.database(target.database)
            main.start_logging(
                self.settings, group, database, target.wid, launcher_pid=target.launcher_pid
            )
            code = main.work(
                self.settings,
                group,
                database,
                self.callbacks,
                wid=target.wid,
                launcher_pid=target.launcher_pid,
            )
        except SettingsError as exc:
            print(f"djmaster worker: {exc}", file=sys.stderr)
            code = WorkerExit.CONFIG_ERROR
        except BaseException:
            with contextlib.suppress(Exception):
                traceback.print_exc()
            code = WorkerExit.CRASHED
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        logging.shutdown()
        launcher_link.exit_process(code)

    def _warn_sockets(self, received: Sequence[int]) -> None:
        """Once per generation: sockets the application opened (a database connection
        made at import?) are shared by every worker forked from here."""
        if self._warned_sockets:
            return
        self._warned_sockets = True
        own = {*self._connections, *received, self._wake_r, self._wake_w}
        if self._listener is not None:
            own.add(self._listener.fileno())
        count = _sockets_open(own)
        if count:
            log.warning(
                "%d socket(s) of the application are open in the preloader: every worker "
                "shares them (a database connection made at import would be used by all "
                "at once); close them in a before_fork callback",
                count,
            )

    # --- reaping ----------------------------------------------------------------------

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            connection = self._children.pop(pid, None)
            if connection is not None:
                self._answer(connection, "ended", str(status))
                self._worker_of.pop(connection.fileno(), None)
            log.debug("worker pid %d ended (wait status %d)", pid, status)


def _pidfd(pid: int) -> int | None:
    """A pidfd of our child ``pid`` (Linux 5.3+), for its launcher to signal and watch
    it without a pid-reuse race; None where the kernel has none."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _sockets_open(own: set[int]) -> int:
    count = 0
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd in own:
                continue
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                    count += 1
    return count


def _close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _drain(fd: int) -> None:
    with contextlib.suppress(BlockingIOError):
        while os.read(fd, 4096):
            pass


def _mtime_ns(path: str | Path) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None
