"""A forked worker's end of its launcher's control socket (``spawn = "fork"``).

The preloader forks the worker for a launcher, which circus started and which stands
for the worker towards circus and the master (worker/launcher.py). The worker is the
preloader's child, not the launcher's, so the two talk over a socket pair the launcher
made (contracts/preloader.py has the messages):

* first thing, the worker says ``hello PID``, so its launcher knows it even if
  the preloader dies before it answers;
* just before it exits, the worker sends its exit code (:func:`exit_process`), which
  its launcher then exits with: the exit-code protocol holds (contracts/exit_codes.py);
* the launcher never writes: when its end closes, the launcher is gone (SIGKILL, or
  circus killed it after ``graceful_timeout``), and :meth:`LauncherLink.watch`'s thread
  ends the worker at once, so that no job runs on unseen while the master releases
  the launcher's jobs. (The preloader, when it lives, kills the worker first: it sees
  its own connection to the launcher close.)

Without a link (``spawn = "exec"``) :func:`exit_process` is ``os._exit``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from typing import NoReturn

from circus_djmaster.contracts import preloader as rendezvous
from circus_djmaster.contracts.exit_codes import WorkerExit

__all__ = ["LauncherLink", "exit_process", "install"]

_link: LauncherLink | None = None


class LauncherLink:
    """The worker's end of the control socket (a ``SOCK_SEQPACKET`` socket)."""

    def __init__(self, fd: int) -> None:
        self.sock = socket.socket(fileno=fd)
        self.sock.set_inheritable(False)

    def hello(self) -> None:
        """Tell the launcher this process' pid."""
        with contextlib.suppress(OSError):
            rendezvous.send(self.sock, "hello", str(os.getpid()))

    def watch(self) -> None:
        """End the process as soon as the launcher's end closes (a daemon thread that
        blocks in ``recv``: the launcher never writes)."""

        def wait() -> None:
            with contextlib.suppress(OSError):
                while self.sock.recv(64):
                    pass
            # The launcher is gone: circus and the master already count this worker
            # dead. Crash code: nobody reads it, but it must not look like a retirement.
            os._exit(WorkerExit.CRASHED)

        threading.Thread(target=wait, name="launcher-link", daemon=True).start()

    def report_exit(self, code: int) -> None:
        with contextlib.suppress(OSError):
            rendezvous.send(self.sock, "exit", str(code))


def install(fd: int) -> LauncherLink:
    """Make ``fd`` (the control socket the preloader passed) this worker's link: say
    hello and watch it. Processes forked later by job code close their copy (they are
    not the worker)."""
    global _link
    link = LauncherLink(fd)
    link.hello()
    link.watch()
    _link = link
    os.register_at_fork(after_in_child=_forget_in_child)
    return link


def _forget_in_child() -> None:
    global _link
    if _link is not None:
        with contextlib.suppress(OSError):
            _link.sock.close()
        _link = None


def exit_process(code: int) -> NoReturn:
    """End this worker process now with ``code``, telling its launcher first (when it
    has one: ``spawn = "fork"``)."""
    if _link is not None:
        _link.report_exit(code)
    os._exit(code)
