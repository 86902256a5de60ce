"""Where a launcher finds the preloader of its settings file, and what they tell each other.

With ``spawn = "fork"`` (docs/master.md, "Fork mode") three processes make one worker:
the **preloader** (``python -m circus_djmaster preloader``, worker/preloader.py) imported
the application once; the **launcher** (what circus starts for the worker's watcher,
worker/launcher.py) asks it for a worker; the **worker** is the process the preloader
forks for that launcher. They meet here:

* a folder private to the user, ``<tmp>/djmaster-<uid>/<16 hex digits of the settings
  path's SHA-256>`` (mode 0700, checked: owner and mode, never a symlink), derived from
  the settings path only, so that launchers, preloaders and the master of one settings
  file agree without being told (:func:`folder_for`, :func:`private_folder`);
* a launcher's command name, ``djl:PID``, names the worker it stands for
  (:func:`launcher_comm`);
* in it, each preloader generation's listening socket ``gen-<pid>.sock`` and the symlink
  ``current`` to the generation that forks now (:data:`CURRENT`): a launcher connects
  to ``current``; a new generation swaps the link atomically when it is ready, an old
  one stops listening and removes its own socket;
* a note ``failed`` left by a preloader that could not load the settings or the
  application (:data:`FAILED`: its pid, then the reason), which waiting launchers read
  instead of waiting out their deadline.

Messages are UTF-8 text, ``KIND TEXT`` (TEXT may hold spaces), one per ``SOCK_SEQPACKET``
datagram, file descriptors passed alongside (``SCM_RIGHTS``): :func:`send` and
:func:`receive` (plain text rather than JSON: json's import would be a sixth of a
launcher's start). Nothing secret is ever in a message, a path or a file name
(database names only; URLs come from the environment). A launcher and its preloader
come from one installation; the messages:

=========  =================================  ============================================
from       message                            meaning
=========  =================================  ============================================
launcher   ``fork GROUP DATABASE PID WID``    fork a worker of GROUP on DATABASE for me
                                              (pid PID, circus wid WID or ``-``); fds:
                                              stdin, stdout, stderr and the worker's end
                                              of the control socket pair
preloader  ``forked PID``                     the worker's pid; fd: its pidfd (when the
                                              kernel has pidfd_open)
preloader  ``refused REASON``                 a configuration error (the launcher exits 78)
preloader  ``retry REASON``                   this generation is stale: connect again
preloader  ``ended STATUS``                   the worker was reaped (``os.waitpid`` status)
worker     ``hello PID``                      sent on the control socket first thing
worker     ``exit CODE``                      sent on the control socket just before it exits
=========  =================================  ============================================

A launcher that dies closes its end of the control socket and its connection to the
preloader: the preloader then kills the worker at once (SIGKILL), and the worker, if
its preloader is gone, ends itself when the control socket closes.
"""

from __future__ import annotations

# socket.py's C core: socket.py builds enums of every address family and socket type at
# import (milliseconds of a launcher's start); socket.socket objects are _socket.sockets.
import _socket
import os
import stat
import sys

try:  # the builtin module: hashlib would load OpenSSL (milliseconds of a launcher's start)
    from _sha2 import sha256  # type: ignore[import-not-found,unused-ignore]  # Python 3.12+
except ImportError:  # pragma: no cover - depends on the Python version
    try:
        from _sha256 import sha256  # type: ignore[import-not-found,no-redef,unused-ignore]
    except ImportError:
        from hashlib import sha256  # type: ignore[assignment,unused-ignore]

TYPE_CHECKING = False  # typing's own import, too, costs a launcher's start
if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "CURRENT",
    "FAILED",
    "LAUNCHER_COMM",
    "MAX_FDS",
    "InsecureFolder",
    "clear_failure",
    "current_link",
    "folder_for",
    "generation_socket",
    "launched_pid",
    "launcher_comm",
    "private_folder",
    "read_failure",
    "receive",
    "send",
    "temporary_root",
    "write_failure",
]

#: The symlink to the socket of the generation that forks now.
CURRENT = "current"
#: The note of a preloader that could not load (its pid, a newline, the reason).
FAILED = "failed"
#: The most file descriptors one message carries (a fork request: stdio + control).
MAX_FDS = 4
_MAX_MESSAGE = 4096
_INT = 4  # bytes of a C int: a file descriptor in SCM_RIGHTS
# sun_path is 108 bytes with its terminating NUL.
_MAX_SOCKET_PATH = 107


#: The command name of a launcher, followed by its worker's pid (:func:`launcher_comm`).
LAUNCHER_COMM = "djl:"


def launcher_comm(worker_pid: int) -> str:
    """The command name (``/proc/PID/comm``, 15 bytes at most) of a launcher standing
    for forked worker ``worker_pid``: ``djl:1234``. The master and ``djmaster status``
    read the worker's title, memory and age through it.

    A launcher's start is measured in milliseconds, so it sets no title (setproctitle
    and its imports cost more than the rest of its start): it writes its command name,
    which ``ps -o pid,comm,args`` and ``top`` show."""
    return f"{LAUNCHER_COMM}{worker_pid}"


def launched_pid(comm: str) -> int | None:
    """The worker pid a launcher's command name names; None for any other process."""
    comm = comm.strip()
    if not comm.startswith(LAUNCHER_COMM):
        return None
    pid = comm[len(LAUNCHER_COMM) :]
    return int(pid) if pid.isdigit() else None


class InsecureFolder(OSError):
    """The rendezvous folder exists but is not private to this user (owner, mode or
    type), or its path is too long for a Unix socket."""


def temporary_root() -> str:
    """``$TMPDIR`` (or ``$TEMP``, ``$TMP``) when set, else ``/tmp``: tempfile's first
    choices, without importing tempfile."""
    for name in ("TMPDIR", "TEMP", "TMP"):
        value = os.environ.get(name)
        if value:
            return value
    return "/tmp"


def folder_for(settings_path: str | os.PathLike[str], base: str | None = None) -> str:
    """The rendezvous folder of a settings file (an absolute path; nothing is created).

    Paths here are strings: pathlib's import costs milliseconds of a launcher's start."""
    absolute = os.path.abspath(os.fspath(settings_path))
    digest = sha256(absolute.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    root = base if base is not None else temporary_root()
    return os.path.join(root, f"djmaster-{os.geteuid()}", digest)


def private_folder(folder: str | os.PathLike[str], *, create: bool = True) -> str:
    """Make (with ``create``) and check ``folder`` and its parent: directories owned by
    this user with mode 0700, not symlinks. Returns ``folder`` (a string).

    Raises :class:`InsecureFolder` naming the path and the reason when another user
    owns one, its mode lets others in, it is not a directory, or a socket path in it
    would be too long; ``FileNotFoundError`` when it is missing and ``create`` is false.
    """
    folder = os.fspath(folder)
    if len(os.fsencode(generation_socket(folder, 4_194_304))) > _MAX_SOCKET_PATH:
        raise InsecureFolder(
            f"{folder}: too long for a Unix socket path (set TMPDIR to a shorter folder)"
        )
    for path in (os.path.dirname(folder), folder):
        if create:
            try:  # noqa: SIM105  (contextlib's import costs a launcher's start)
                os.mkdir(path, 0o700)
            except FileExistsError:
                pass
        info = os.lstat(path)
        if not stat.S_ISDIR(info.st_mode):
            raise InsecureFolder(f"{path}: not a directory (a symlink or a file is in the way)")
        if info.st_uid != os.geteuid():
            raise InsecureFolder(f"{path}: owned by uid {info.st_uid}, not by this user")
        if stat.S_IMODE(info.st_mode) & 0o077:
            raise InsecureFolder(
                f"{path}: mode {stat.S_IMODE(info.st_mode):o} lets other users in (must be 700)"
            )
    return folder


def generation_socket(folder: str, pid: int) -> str:
    """The listening socket of the preloader generation ``pid``."""
    return os.path.join(folder, f"gen-{pid}.sock")


def current_link(folder: str) -> str:
    """The symlink to the socket of the generation that forks now (what launchers
    connect to)."""
    return os.path.join(folder, CURRENT)


def write_failure(folder: str, pid: int, reason: str) -> None:
    """Leave the note of a preloader that could not load (atomically): its pid on the
    first line, the reason after."""
    temporary = os.path.join(folder, f".{FAILED}.{pid}")
    with open(temporary, "w", encoding="utf-8") as note:
        note.write(f"{pid}\n{reason}")
    os.replace(temporary, os.path.join(folder, FAILED))


def read_failure(folder: str) -> tuple[int, str] | None:
    """``(pid, reason)`` of the note a failed preloader left, None when there is none."""
    try:
        with open(os.path.join(folder, FAILED), encoding="utf-8") as note:
            pid, _, reason = note.read().partition("\n")
        return int(pid), reason
    except (OSError, ValueError):
        return None


def clear_failure(folder: str) -> None:
    """Remove the note (a new generation starts)."""
    try:  # noqa: SIM105  (contextlib's import costs a launcher's start)
        os.unlink(os.path.join(folder, FAILED))
    except FileNotFoundError:
        pass


def send(sock: _socket.socket, kind: str, text: str = "", fds: Sequence[int] = ()) -> None:
    """Send one message, ``KIND TEXT`` (and ``fds``), as one datagram. Raises OSError
    when the peer is gone."""
    data = f"{kind} {text}".encode("utf-8", "surrogateescape")
    if fds:
        # SCM_RIGHTS carries C ints (socket.send_fds does the same with array's import).
        ints = b"".join(fd.to_bytes(_INT, sys.byteorder, signed=True) for fd in fds)
        sock.sendmsg([data], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, ints)])
    else:
        sock.send(data)


def receive(sock: _socket.socket) -> tuple[str | None, str, list[int]]:
    """One message: its kind, its text and the fds that came with it; ``(None, "", [])``
    at end of stream (the peer closed or died). Raises OSError on a broken socket."""
    data, ancillary, _flags, _address = sock.recvmsg(_MAX_MESSAGE, _socket.CMSG_LEN(MAX_FDS * _INT))
    fds: list[int] = []
    for level, what, payload in ancillary:
        if level == _socket.SOL_SOCKET and what == _socket.SCM_RIGHTS:
            fds += [
                int.from_bytes(payload[at : at + _INT], sys.byteorder, signed=True)
                for at in range(0, len(payload) - _INT + 1, _INT)
            ]
    if not data:
        for fd in fds:
            os.close(fd)
        return None, "", []
    kind, _, text = data.decode("utf-8", "surrogateescape").partition(" ")
    return kind, text, list(fds)
