"""What crosses process boundaries in fork mode: the launcher's and the preloader's
titles, the rendezvous folder, the messages and the failure note (contracts/)."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from circus_djmaster.contracts import preloader as rendezvous
from circus_djmaster.contracts.titles import preloader_is_old, preloader_title


def test_a_launchers_command_name_names_its_worker() -> None:
    comm = rendezvous.launcher_comm(4194303)
    assert comm == "djl:4194303"
    assert len(comm.encode()) <= 15, "/proc/PID/comm keeps 15 bytes"
    assert rendezvous.launched_pid(comm) == 4194303
    assert rendezvous.launched_pid(comm + "\n") == 4194303  # as /proc shows it
    for other in ("python", "python3.11", "djl:", "djl:12x", "delayed_job: worker[0]"):
        assert rendezvous.launched_pid(other) is None


def test_the_preloader_title_says_old_once_a_newer_generation_forks() -> None:
    current = preloader_title("/etc/app/djmaster.toml")
    old = preloader_title("/etc/app/djmaster.toml", old=True)
    assert current == "djmaster: preloader (/etc/app/djmaster.toml)"
    assert old == current + " [OLD]"
    assert not preloader_is_old(current) and preloader_is_old(old + "\0 ")
    # A worker's [OLD] is not a preloader's.
    assert not preloader_is_old("delayed_job: worker[0] (q1) @primary [OLD]")


def test_the_folder_is_derived_from_the_settings_path_only(tmp_path: Path) -> None:
    base = str(tmp_path)
    first = rendezvous.folder_for("/etc/app/djmaster.toml", base=base)
    assert first == rendezvous.folder_for("/etc/app/../app/djmaster.toml", base=base)
    assert first != rendezvous.folder_for("/etc/other/djmaster.toml", base=base)
    assert Path(first).parent == tmp_path / f"djmaster-{os.geteuid()}"
    assert "djmaster.toml" not in first, "a digest, not the path"


def test_the_folder_is_made_private_and_checked(tmp_path: Path) -> None:
    folder = Path(rendezvous.private_folder(rendezvous.folder_for("/x.toml", base=str(tmp_path))))
    for path in (folder, folder.parent):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
    folder.chmod(0o750)
    with pytest.raises(rendezvous.InsecureFolder, match="mode 750 lets other users in"):
        rendezvous.private_folder(folder)
    folder.chmod(0o700)
    rendezvous.private_folder(folder, create=False)


def test_a_symlink_or_a_file_in_the_way_is_refused(tmp_path: Path) -> None:
    folder = Path(rendezvous.folder_for("/y.toml", base=str(tmp_path)))
    folder.parent.mkdir(mode=0o700)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    folder.symlink_to(elsewhere)
    with pytest.raises(rendezvous.InsecureFolder, match="not a directory"):
        rendezvous.private_folder(folder)


def test_a_folder_too_deep_for_a_unix_socket_is_refused(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 90)
    with pytest.raises(rendezvous.InsecureFolder, match="too long for a Unix socket"):
        rendezvous.private_folder(rendezvous.folder_for("/z.toml", base=str(deep)))


def test_messages_carry_json_and_file_descriptors() -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    read_end, write_end = os.pipe()
    try:
        rendezvous.send(left, "refused", "a reason with spaces: é", [write_end])
        kind, text, fds = rendezvous.receive(right)
        assert (kind, text) == ("refused", "a reason with spaces: é")
        (passed,) = fds
        os.write(passed, b"through the passed fd")
        os.close(passed)
        assert os.read(read_end, 100) == b"through the passed fd"
        left.close()
        assert rendezvous.receive(right) == (None, "", [])  # end of stream: the peer is gone
    finally:
        for fd in (read_end, write_end):
            os.close(fd)
        right.close()


def test_the_failure_note_round_trips(tmp_path: Path) -> None:
    folder = str(tmp_path)
    assert rendezvous.read_failure(folder) is None
    rendezvous.write_failure(folder, 42, "importing app 'x' failed:\nline two")
    assert rendezvous.read_failure(folder) == (42, "importing app 'x' failed:\nline two")
    rendezvous.clear_failure(folder)
    assert rendezvous.read_failure(folder) is None
