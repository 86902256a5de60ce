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
* in it, each preloader generation's listening socket ``gen-<pid>.sock`` and the symlink
  ``current`` to the generation that forks now (:data:`CURRENT`): a launcher connects
  to ``current``; a new generation swaps the link atomically when it is ready, an old
  one stops listening and removes its own socket;
* a note ``failed`` left by a preloader that could not load the settings or the
  application (:data:`FAILED`), which waiting launchers read instead of waiting out
  their deadline.

Messages are JSON objects, one per ``SOCK_SEQPACKET`` datagram, file descriptors passed
alongside (``SCM_RIGHTS``): :func:`send` and :func:`receive`. Nothing secret is ever in
a message, a path or a file name (database names only; URLs come from the environment).

=========  =====================================  ===========================================
from       message                                meaning
=========  =====================================  ===========================================
launcher   ``{"fork": {group, database,           fork a worker for me; fds: stdin, stdout,
           launcher}}``                           stderr and the worker's end of the control
                                                  socket pair
preloader  ``{"forked": pid}``                    the worker's pid; fd: its pidfd (when the
                                                  kernel has pidfd_open)
preloader  ``{"refused": reason}``                a configuration error (the launcher exits 78)
preloader  ``{"retry": reason}``                  this generation is stale: connect again
preloader  ``{"ended": wait status}``             the worker was reaped (``os.waitpid`` status)
worker     ``{"hello": pid}``                     sent on the control socket first thing
worker     ``{"exit": code}``                     sent on the control socket just before it exits
=========  =====================================  ===========================================

A launcher that dies closes its end of the control socket and its connection to the
preloader: the preloader then kills the worker at once (SIGKILL), and the worker, if
its preloader is gone, ends itself when the control socket closes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "CURRENT",
    "FAILED",
    "MAX_FDS",
    "PROTOCOL",
    "InsecureFolder",
    "folder_for",
    "generation_socket",
    "private_folder",
    "read_failure",
    "receive",
    "send",
    "temporary_root",
    "write_failure",
]

#: The symlink to the socket of the generation that forks now.
CURRENT = "current"
#: The note of a preloader that could not load (JSON: pid, reason).
FAILED = "failed"
#: The most file descriptors one message carries (a fork request: stdio + control).
MAX_FDS = 4
#: Bumped when a message changes meaning; a launcher and its preloader come from one
#: installation, but an old generation may still run during a deploy.
PROTOCOL = 1
_MAX_MESSAGE = 4096
# sun_path is 108 bytes with its terminating NUL.
_MAX_SOCKET_PATH = 107


class InsecureFolder(OSError):
    """The rendezvous folder exists but is not private to this user (owner, mode or
    type), or its path is too long for a Unix socket."""


def temporary_root() -> Path:
    """``$TMPDIR`` (or ``$TEMP``, ``$TMP``) when set, else ``/tmp``: tempfile's first
    choices, without importing tempfile (a launcher's start counts in milliseconds)."""
    for name in ("TMPDIR", "TEMP", "TMP"):
        value = os.environ.get(name)
        if value:
            return Path(value)
    return Path("/tmp")


def folder_for(settings_path: Path | str, base: Path | None = None) -> Path:
    """The rendezvous folder of a settings file (absolute path; nothing is created)."""
    absolute = os.path.abspath(os.fspath(settings_path))
    digest = hashlib.sha256(absolute.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    root = base if base is not None else temporary_root()
    return root / f"djmaster-{os.geteuid()}" / digest


def private_folder(folder: Path, *, create: bool = True) -> Path:
    """Make (with ``create``) and check ``folder`` and its parent: directories owned by
    this user with mode 0700, not symlinks. Returns ``folder``.

    Raises :class:`InsecureFolder` naming the path and the reason when another user
    owns one, its mode lets others in, it is not a directory, or a socket path in it
    would be too long; ``FileNotFoundError`` when it is missing and ``create`` is false.
    """
    if len(os.fsencode(generation_socket(folder, 4_194_304))) > _MAX_SOCKET_PATH:
        raise InsecureFolder(
            f"{folder}: too long for a Unix socket path (set TMPDIR to a shorter folder)"
        )
    for path in (folder.parent, folder):
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(path, 0o700)
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


def generation_socket(folder: Path, pid: int) -> Path:
    """The listening socket of the preloader generation ``pid``."""
    return folder / f"gen-{pid}.sock"


def write_failure(folder: Path, pid: int, reason: str) -> None:
    """Leave the note of a preloader that could not load (atomically)."""
    temporary = folder / f".{FAILED}.{pid}"
    temporary.write_text(json.dumps({"pid": pid, "reason": reason}), encoding="utf-8")
    os.replace(temporary, folder / FAILED)


def read_failure(folder: Path) -> tuple[int, str] | None:
    """``(pid, reason)`` of the note a failed preloader left, None when there is none."""
    try:
        note = json.loads((folder / FAILED).read_text(encoding="utf-8"))
        return int(note["pid"]), str(note["reason"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def send(sock: socket.socket, message: dict[str, Any], fds: Sequence[int] = ()) -> None:
    """Send one message (and ``fds``) as one datagram. Raises OSError when the peer is
    gone."""
    data = json.dumps({"v": PROTOCOL, **message}).encode("utf-8")
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.send(data)


def receive(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """One message and the fds that came with it; ``(None, [])`` at end of stream (the
    peer closed or died). Raises OSError on a broken socket, ValueError on a message
    that is not a JSON object; fds received with it are closed then."""
    data, fds, _flags, _address = socket.recv_fds(sock, _MAX_MESSAGE, MAX_FDS)
    if not data:
        for fd in fds:
            os.close(fd)
        return None, []
    try:
        message = json.loads(data)
        if not isinstance(message, dict):
            raise ValueError("not a JSON object")
    except ValueError:
        for fd in fds:
            os.close(fd)
        raise
    return message, list(fds)
