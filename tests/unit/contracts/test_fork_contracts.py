"""What crosses process boundaries in fork mode: the launcher's and the preloader's
titles, the rendezvous folder, the messages and the failure note (contracts/)."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from circus_djmaster.contracts import preloader as rendezvous
from circus_djmaster.contracts.titles import (
    WorkerState,
    launched_pid,
    launcher_title,
    preloader_is_old,
    preloader_title,
    state_from_title,
)


def test_a_launcher_title_names_its_worker_and_is_never_a_worker_title() -> None:
    waiting = launcher_title("mail", "primary", None)
    assert waiting == "delayed_job: launcher[mail] @primary (waiting for the preloader)"
    standing = launcher_title("mail", "primary", 4194303)
    assert standing == "delayed_job: launcher[mail] @primary -> worker pid 4194303"
    assert launched_pid(waiting) is None
    assert launched_pid(standing) == 4194303
    # setproctitle pads the argv area: the master reads titles with NULs and spaces.
    assert launched_pid(standing + "\0\0   ") == 4194303
    # The master reads the worker's own title for the state, never the launcher's.
    assert state_from_title(standing) is WorkerState.STARTING
    assert launched_pid("delayed_job: worker[0] (q1) @primary -> worker pid 12") is None
    assert launched_pid("python -m circus_djmaster launch --settings s") is None


def test_the_preloader_title_says_old_once_a_newer_generation_forks() -> None:
    current = preloader_title("/etc/app/djmaster.toml")
    old = preloader_title("/etc/app/djmaster.toml", old=True)
    assert current == "djmaster: preloader (/etc/app/djmaster.toml)"
    assert old == current + " [OLD]"
    assert not preloader_is_old(current) and preloader_is_old(old + "\0 ")
    # A worker's [OLD] is not a preloader's.
    assert not preloader_is_old("delayed_job: worker[0] (q1) @primary [OLD]")


def test_the_folder_is_derived_from_the_settings_path_only(tmp_path: Path) -> None:
    first = rendezvous.folder_for("/etc/app/djmaster.toml", base=tmp_path)
    assert first == rendezvous.folder_for("/etc/app/../app/djmaster.toml", base=tmp_path)
    assert first != rendezvous.folder_for("/etc/other/djmaster.toml", base=tmp_path)
    assert first.parent == tmp_path / f"djmaster-{os.geteuid()}"
    assert "djmaster.toml" not in str(first), "a digest, not the path"


def test_the_folder_is_made_private_and_checked(tmp_path: Path) -> None:
    folder = rendezvous.private_folder(rendezvous.folder_for("/x.toml", base=tmp_path))
    for path in (folder, folder.parent):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
    folder.chmod(0o750)
    with pytest.raises(rendezvous.InsecureFolder, match="mode 750 lets other users in"):
        rendezvous.private_folder(folder)
    folder.chmod(0o700)
    rendezvous.private_folder(folder, create=False)


def test_a_symlink_or_a_file_in_the_way_is_refused(tmp_path: Path) -> None:
    folder = rendezvous.folder_for("/y.toml", base=tmp_path)
    folder.parent.mkdir(mode=0o700)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    folder.symlink_to(elsewhere)
    with pytest.raises(rendezvous.InsecureFolder, match="not a directory"):
        rendezvous.private_folder(folder)


def test_a_folder_too_deep_for_a_unix_socket_is_refused(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 90)
    with pytest.raises(rendezvous.InsecureFolder, match="too long for a Unix socket"):
        rendezvous.private_folder(rendezvous.folder_for("/z.toml", base=deep))


def test_messages_carry_json_and_file_descriptors() -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    read_end, write_end = os.pipe()
    try:
        rendezvous.send(left, {"forked": 1234}, [write_end])
        message, fds = rendezvous.receive(right)
        assert message == {"v": rendezvous.PROTOCOL, "forked": 1234}
        (passed,) = fds
        os.write(passed, b"through the passed fd")
        os.close(passed)
        assert os.read(read_end, 100) == b"through the passed fd"
        left.close()
        assert rendezvous.receive(right) == (None, [])  # end of stream: the peer is gone
    finally:
        for fd in (read_end, write_end):
            os.close(fd)
        right.close()


def test_the_failure_note_round_trips(tmp_path: Path) -> None:
    assert rendezvous.read_failure(tmp_path) is None
    rendezvous.write_failure(tmp_path, 42, "importing app 'x' failed")
    assert rendezvous.read_failure(tmp_path) == (42, "importing app 'x' failed")
