"""``python -S …/circus_djmaster/worker/launcher.py --settings FILE --group G --database D
--wait S``: what circus runs for a worker of a ``spawn = "fork"`` group (``djmaster
launch`` and ``python -m circus_djmaster launch`` run it too).

A minimal process (the standard library and the package's contracts: no settings, no
application, no psycopg, not even ``site``: it starts in about 15 ms) that has the
preloader fork the real worker for it and then stands for that worker, so that circus'
process *is* the worker as far as circus, the master and operators can tell
(docs/master.md, "Fork mode"):

* it passes its stdin, stdout and stderr (circus' pipes or streams) and one end of a
  control socket pair to the preloader (``SCM_RIGHTS``, contracts/preloader.py): the
  worker's output goes where circus expects this process' output;
* the worker goes by this process' pid: ``locked_by``, the running-jobs file, database
  application names; circus' reap, the after_reap hook and the master's release of a
  dead worker's jobs work unchanged;
* its command name (``/proc/PID/comm``) names the worker, ``djl:1234``
  (contracts/preloader.py): the master and ``djmaster status`` read the worker's title,
  memory and age;
* every signal it gets (circus' ``stop_signal``, ``circusctl signal``, the master's
  TERM, QUIT, USR1, USR2; also INT and HUP) is relayed to the worker (through a pidfd
  when the kernel has them, so never to a reused pid); if its own parent (circusd)
  dies, the worker gets TERM, as an exec-mode worker stops when its parent dies;
* it exits as the worker did: with the code the worker reported, or of the signal that
  killed the worker (the preloader reports it), so the exit-code protocol holds
  (contracts/exit_codes.py). A worker that ended with no report (its preloader died
  too) counts as a crash (exit 1);
* SIGKILLed, it takes its worker with it: the preloader kills the worker when this
  process' connection closes, and the worker ends itself when the control socket does.

Before the worker exists: it waits up to ``--wait`` seconds (``preload_timeout``) for a
preloader to accept it (one may be starting or importing the application); TERM, INT
or QUIT meanwhile end it (exit 0, nothing started). A preloader that failed to load
(its note in the rendezvous folder) ends it with exit 0 and the reason on stderr: the
master holds fork-mode watchers while the preloader is blocked, and no worker should
be charged for it. A preloader refusing the request (a configuration error: an unknown
group, threads in the preloader) or none answering in time ends it with 78.
"""

from __future__ import annotations

import os
import select
import sys
import time

TYPE_CHECKING = False  # typing's own import costs milliseconds of every launcher's start
if TYPE_CHECKING:
    import signal
    import socket
    from typing import Any
else:
    # signal.py and socket.py add enums of every signal, address family and socket type
    # to these C cores at import: about 7 ms of a launcher's start. The names used here
    # are the same in both.
    import _signal as signal
    import _socket as socket

if __name__ == "__main__":
    # Run as a file by circus.ini (``python -S``: no site, no .pth files): the package
    # is found next to this file, and this folder's modules must not shadow any other.
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from circus_djmaster.contracts import preloader as rendezvous  # noqa: E402
from circus_djmaster.contracts.watchers import PRELOADER_WATCHER  # noqa: E402

# contracts/exit_codes.py, its enum and functools would add 3 ms to the start: the
# codes (WorkerExit's values) are checked equal by tests/process/test_fork_mode.py.
RETIRED, CRASHED, CONFIG_ERROR = 0, 1, 78

__all__ = ["RELAYED", "Launcher", "main"]

#: The signals relayed to the worker (all but KILL and STOP can be caught).
RELAYED = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGHUP,
)
#: Signals that end a launcher that has no worker yet.
_STOPS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
#: How long a launcher whose worker ended waits for the preloader's word on how.
ENDED_WAIT = 2.0
#: The launcher wakes at least this often (its parent check).
TICK = 0.5
_FIRST_RETRY = 0.005
_MAX_RETRY = 0.1


class _ignoring:
    """``contextlib.suppress`` without contextlib's import (about 4 ms of this process'
    start, a tenth of a scale-from-zero pickup)."""

    def __init__(self, *errors: type[BaseException]) -> None:
        self.errors = errors

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> bool:
        return kind is not None and issubclass(kind, self.errors)


class _Retry(Exception):
    """Ask a preloader again (the generation changed, or it died before forking)."""


class Launcher:
    """One launcher of a worker of group ``group`` on ``database``; ``settings``: the
    settings file (its path names the preloader's folder, it is never read here);
    ``wait``: seconds to wait for a preloader; ``wid``: circus' wid of this process
    (None: started by hand), passed on to the worker for its title and log lines."""

    def __init__(
        self,
        settings: str,
        group: str,
        database: str,
        wait: float,
        wid: int | None = None,
    ) -> None:
        self.settings = settings
        self.group = group
        self.database = database
        self.wait = wait
        self.wid = wid  # circus' wid of this process, which the worker shows
        self.folder = rendezvous.folder_for(settings)
        self.worker: int | None = None
        self.pidfd: int | None = None
        self.code: int | None = None  # what the worker reported
        self.status: int | None = None  # the preloader's wait status of the worker
        self.conn: socket.socket | None = None
        self.control: socket.socket | None = None
        self._pending: list[int] = []
        self._ppid = os.getppid()
        self._parent_gone = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    # --- signals ----------------------------------------------------------------------

    def install_signals(self) -> None:
        for signum in RELAYED:
            signal.signal(signum, self._record)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)

    def _record(self, signum: int, _frame: object) -> None:
        self._pending.append(signum)

    def _relay(self) -> None:
        while self._pending and self.worker is not None:
            self._send(self._pending.pop(0))
        if not self._parent_gone and os.getppid() != self._ppid and self.worker is not None:
            self._parent_gone = True
            _say(f"parent process gone: worker pid {self.worker} gets TERM")
            self._send(signal.SIGTERM)

    def _send(self, signum: int) -> None:
        assert self.worker is not None
        with _ignoring(ProcessLookupError, OSError):
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, signum)
            else:
                os.kill(self.worker, signum)

    # --- life -------------------------------------------------------------------------

    def run(self) -> int:
        """Get a worker, stand for it; the exit code (or this process dies of the signal
        that killed the worker)."""
        self.install_signals()
        deadline = time.monotonic() + self.wait
        while self.worker is None:
            if self._stopped():
                return RETIRED
            try:
                outcome = self._ask(deadline)
            except _Retry:
                self._close_links()
                continue
            if outcome is not None:
                return outcome
        self._publish()
        return self._stand()

    def _stopped(self) -> bool:
        """TERM, INT or QUIT came before a worker was asked for: nothing to stand for."""
        if any(signum in _STOPS for signum in self._pending):
            _say("stopped before its worker started")
            return True
        return False

    def _publish(self) -> None:
        """Name the worker in this process' command name (the master reads it)."""
        if self.worker is None:
            return
        with _ignoring(OSError), open("/proc/self/comm", "w") as comm:
            comm.write(rendezvous.launcher_comm(self.worker))

    def _connect(self, deadline: float) -> socket.socket | int:
        """A connection to the preloader, or an exit code when there will be none."""
        pause = _FIRST_RETRY
        while True:
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                rendezvous.private_folder(self.folder, create=False)
                conn.connect(rendezvous.current_link(self.folder))
                return conn
            except rendezvous.InsecureFolder as exc:
                conn.close()
                _say(f"cannot use the preloader's folder: {exc}")
                return CONFIG_ERROR
            except OSError:
                conn.close()
            failure = rendezvous.read_failure(self.folder)
            if failure is not None and not _alive(failure[0]):
                _say(
                    f"the preloader could not load, so no worker starts: {failure[1]} "
                    f"(fix it, then touch {self.settings} or `circusctl start "
                    f"{PRELOADER_WATCHER}`)"
                )
                return RETIRED
            if time.monotonic() >= deadline:
                _say(
                    f"no preloader accepted this worker within {self.wait:g}s "
                    f"({rendezvous.current_link(self.folder)}): is the watcher "
                    f"{PRELOADER_WATCHER} running (`circusctl status {PRELOADER_WATCHER}`)? "
                    "Its log says why not; preload_timeout sets the wait"
                )
                return CONFIG_ERROR
            if self._stopped():
                return RETIRED
            self._sleep(pause)
            pause = min(pause * 2, _MAX_RETRY)

    def _ask(self, deadline: float) -> int | None:
        """Have the preloader fork a worker: None once ``self.worker`` is known, or an
        exit code. Raises _Retry to ask again."""
        connected = self._connect(deadline)
        if isinstance(connected, int):
            return connected
        self.conn = connected
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.control = mine
        try:
            wid = "-" if self.wid is None else str(self.wid)
            request = f"{self.group} {self.database} {os.getpid()} {wid}"
            rendezvous.send(self.conn, "fork", request, [0, 1, 2, theirs.fileno()])
        except OSError as exc:
            raise _Retry() from exc
        finally:
            theirs.close()  # the worker's end lives in the preloader, then the worker
        while self.worker is None:
            for fd in self._ready([self.conn, self.control], TICK):
                if self.conn is not None and fd == self.conn.fileno():
                    outcome = self._from_preloader(before_fork=True)
                    if outcome is not None:
                        return outcome
                elif self.control is not None and fd == self.control.fileno():
                    self._from_worker(before_fork=True)
            if self.worker is None and time.monotonic() >= deadline + ENDED_WAIT:
                _say("the preloader accepted but forked no worker in time")
                return CONFIG_ERROR
        return None

    def _from_preloader(self, *, before_fork: bool = False) -> int | None:
        assert self.conn is not None
        try:
            kind, text, fds = rendezvous.receive(self.conn)
        except OSError:
            kind, text, fds = None, "", []
        if kind == "forked" and text.isdigit() and fds and self.pidfd is None:
            self.pidfd = fds.pop(0)  # the worker's pidfd (the hello may have brought one)
        for extra in fds:
            os.close(extra)
        if kind is None:
            self.conn.close()
            self.conn = None  # the preloader died; the worker may live on
            return None
        if kind == "forked" and text.isdigit():
            self.worker = int(text)
        elif kind == "ended" and text.lstrip("-").isdigit():
            self.status = int(text)
        elif kind == "retry":
            raise _Retry()
        elif kind == "refused":
            _say(f"the preloader refused to fork this worker: {text}")
            return CONFIG_ERROR
        return None

    def _from_worker(self, *, before_fork: bool = False) -> bool:
        """A message of the worker; False at end of stream (the worker's process, and
        every copy of its end, are gone)."""
        assert self.control is not None
        try:
            kind, text, _fds = rendezvous.receive(self.control)
        except OSError:
            kind, text = None, ""
        if kind is None:
            self.control.close()
            self.control = None
            if before_fork and self.worker is None:
                raise _Retry()  # the preloader died before it forked
            return False
        if kind == "hello" and text.isdigit() and self.worker is None:
            self.worker = int(text)
            try:
                self.pidfd = os.pidfd_open(self.worker)
            except (OSError, AttributeError):
                self.pidfd = None
        elif kind == "exit" and text.lstrip("-").isdigit():
            self.code = int(text)
        return True

    def _stand(self) -> int:
        """Relay signals until the worker ended; the exit code."""
        ended_at: float | None = None
        while self.status is None:
            self._relay()
            watched: list[Any] = [self.conn, self.control]
            if self.pidfd is not None and ended_at is None:
                watched.append(self.pidfd)
            for fd in self._ready(watched, TICK):
                if self.conn is not None and fd == self.conn.fileno():
                    self._from_preloader()
                elif self.control is not None and fd == self.control.fileno():
                    if not self._from_worker() and self.pidfd is None:
                        ended_at = ended_at or time.monotonic()
                elif fd == self.pidfd:
                    ended_at = ended_at or time.monotonic()
            if ended_at is not None and (
                self.conn is None or time.monotonic() - ended_at > ENDED_WAIT
            ):
                break
            if self.conn is None and self.control is None and self.pidfd is None:
                break  # nothing left to watch: the worker is gone
        return self._end()

    def _end(self) -> int:
        self._close_links()
        if self.status is not None:
            if os.WIFSIGNALED(self.status):
                _die_of(os.WTERMSIG(self.status))
            return os.WEXITSTATUS(self.status) if os.WIFEXITED(self.status) else CRASHED
        if self.code is not None:
            return self.code
        _say(f"worker pid {self.worker} ended without an exit status (its preloader is gone)")
        return CRASHED

    # --- plumbing ---------------------------------------------------------------------

    def _ready(self, watched: list[Any], timeout: float) -> list[int]:
        """The watched fds (sockets or ints; None skipped) ready to read; wakes on a
        signal too (and handles it)."""
        poll = select.poll()
        poll.register(self._wake_r, select.POLLIN)
        for item in watched:
            if item is not None:
                poll.register(item if isinstance(item, int) else item.fileno(), select.POLLIN)
        try:
            ready = [fd for fd, _events in poll.poll(timeout * 1000)]
        except InterruptedError:
            ready = []
        if self._wake_r in ready:
            with _ignoring(BlockingIOError):
                while os.read(self._wake_r, 256):
                    pass
            self._relay()
        return [fd for fd in ready if fd != self._wake_r]

    def _sleep(self, seconds: float) -> None:
        self._ready([], seconds)

    def _close_links(self) -> None:
        for link in (self.conn, self.control):
            if link is not None:
                link.close()
        self.conn = self.control = None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _die_of(signum: int) -> None:
    """End this process of ``signum``, as the worker ended (no core file)."""
    with _ignoring(Exception):
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    with _ignoring(OSError, ValueError):  # SIGKILL and SIGSTOP keep theirs
        signal.signal(signum, signal.SIG_DFL)
    with _ignoring(OSError, ValueError):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signum])
    os.kill(os.getpid(), signum)
    os._exit(128 + signum)  # a signal whose default action is not to end the process


def _say(text: str) -> None:
    with _ignoring(OSError):
        print(f"djmaster launcher [{os.getpid()}]: {text}", file=sys.stderr, flush=True)


_OPTIONS = ("--settings", "--group", "--database", "--wid", "--wait")


def main(argv: list[str]) -> int:
    """``launch --settings S --group G --database D [--wid N] [--wait SECONDS]`` (as
    circus.ini gives it); 78 for any other command line: circus.ini is rendered, so a
    mistake there is a configuration error."""
    values: dict[str, str] = {}
    pairs = iter(argv)
    for name in pairs:
        value = next(pairs, None)
        if name not in _OPTIONS or value is None or name in values:
            values.clear()
            break
        values[name] = value
    try:
        wait = float(values.get("--wait", "60"))
        wid = values.get("--wid")
        if wid is not None and not (wid.isascii() and wid.isdigit()):
            raise ValueError(wid)
        launcher = Launcher(
            values["--settings"],
            values["--group"],
            values["--database"],
            wait,
            None if wid is None else int(wid),
        )
    except (KeyError, ValueError):
        _say(
            "usage: launch --settings FILE --group NAME --database NAME [--wid N] "
            f"[--wait S], not {argv}"
        )
        return CONFIG_ERROR
    return launcher.run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
