"""The after_reap hook inside a real circusd (docs/design.md §9).

A watcher with ``respawn = true`` respawns every process that exits by itself. With
``hooks.after_reap = circus_djmaster.hooks.after_reap`` a process exiting with
``ExitCode.RETIRED`` (0) stays gone and the watcher's target drops back to 0, while a
process exiting with any other code (here 3) is respawned. Workers that exit 0 because
circus itself stops the watcher keep the target.

The watchers run a tiny ``python -c`` instead of a djmaster worker, so no database is
needed; only the hook is under test.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import zmq
from circus.client import CircusClient
from circus.exc import CallError

from tests.support.waiting import wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
CIRCUSD = Path(sys.executable).with_name("circusd")
CHECK_DELAY = 0.5  # circusd reaps and respawns on this period
SLOW_CHECK_DELAY = 60.0
DEADLINE = 20.0  # generous: a loaded CI machine is slow, a pass is fast
# Lives 0.3 s, then exits with the code given as its argument.
CHILD = "import sys, time\ntime.sleep(0.3)\nsys.exit(int(sys.argv[1]))"
# Like a djmaster worker on TERM: exits 0 (RETIRED). Says when its handler is in
# place by creating a file in the folder given as its argument.
GRACEFUL_CHILD = (
    "import os, signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
    "os.close(os.open(os.path.join(sys.argv[1], str(os.getpid())), os.O_CREAT | os.O_WRONLY))\n"
    "time.sleep(120)"
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Circusd:
    process: subprocess.Popen[bytes]
    client: CircusClient
    log: Path
    ready: Path  # GRACEFUL_CHILD processes create <pid> files here

    def call(self, command: str, **props: Any) -> dict[str, Any]:
        """One command; retried while circus' global command lock is busy (docs/design.md §9)."""
        deadline = time.monotonic() + DEADLINE
        while True:
            try:
                answer = self.client.call({"command": command, "properties": props})
            except CallError:
                answer = {"status": "error", "reason": "timed out"}
            if answer.get("status") == "ok":
                return answer
            busy = any(
                word in str(answer.get("reason", ""))
                for word in ("already running", "restarting", "timed out")
            )
            if not busy or time.monotonic() > deadline:
                pytest.fail(f"circus {command} {props}: {answer}")
            time.sleep(0.05)

    def pids(self, watcher: str) -> list[int]:
        return list(self.call("list", name=watcher)["pids"])

    def target(self, watcher: str) -> int:
        # `numprocesses` answers the live process count; the target is an option.
        return int(self.call("get", name=watcher, keys=["numprocesses"])["options"]["numprocesses"])

    def grow(self, watcher: str) -> None:
        # A watcher at numprocesses 0 is stopped and `incr` alone spawns nothing:
        # raise the target first, then `start` the (stopped) watcher.
        self.call("incr", name=watcher, nb=1)
        self.call("start", name=watcher)


def watcher_section(name: str, code: str, argument: object) -> str:
    # exec() of a one-line string: an ini value cannot span lines. No quotes in code.
    one_line = code.replace("\n", "\\n")
    return f"""
[watcher:{name}]
cmd = {sys.executable}
args = -c "exec('{one_line}')" {argument}
numprocesses = 0
respawn = true
copy_env = true
graceful_timeout = 5
hooks.after_reap = circus_djmaster.hooks.after_reap
hooks.before_spawn = circus_djmaster.hooks.before_spawn
"""


@pytest.fixture
def circusd(tmp_path: Path) -> Iterator[Circusd]:
    yield from run_circusd(tmp_path, CHECK_DELAY)


@pytest.fixture
def slow_circusd(tmp_path: Path) -> Iterator[Circusd]:
    """circusd checking its processes only every 60 s: whatever happens sooner is the
    immediate reaper's doing."""
    yield from run_circusd(tmp_path, SLOW_CHECK_DELAY)


def run_circusd(tmp_path: Path, check_delay: float) -> Iterator[Circusd]:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    log = tmp_path / "circusd.log"
    ready = tmp_path / "ready"
    ready.mkdir()
    ini = tmp_path / "circus.ini"
    ini.write_text(
        f"""[circus]
endpoint = {endpoint}
pubsub_endpoint = tcp://127.0.0.1:{free_port()}
multicast_endpoint =
statsd = false
check_delay = {check_delay}
logoutput = {log}
loglevel = info
"""
        + watcher_section("retire", CHILD, 0)
        + watcher_section("crash", CHILD, 3)
        + watcher_section("graceful", GRACEFUL_CHILD, ready),
        encoding="utf-8",
    )
    env = dict(os.environ)
    # circusd imports the hook: make this checkout importable whether installed or not.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    process = subprocess.Popen(
        [str(CIRCUSD), str(ini)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    context = zmq.Context()
    client = CircusClient(context=context, endpoint=endpoint, timeout=2.0)
    daemon = Circusd(process, client, log, ready)
    try:

        def answers() -> bool:
            if process.poll() is not None:
                pytest.fail(f"circusd exited with {process.returncode}:\n{read(log)}")
            try:
                return client.call({"command": "list", "properties": {}}).get("status") == "ok"
            except CallError:
                return False

        wait_until(answers, DEADLINE, "circusd to answer")
        yield daemon
    finally:
        try:
            if process.poll() is None:
                client.call({"command": "quit", "properties": {}})
        except CallError:
            pass
        try:
            process.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=DEADLINE)
        client.stop()
        context.destroy(linger=0)


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""


def test_retired_worker_is_not_respawned(circusd: Circusd) -> None:
    circusd.grow("retire")
    assert circusd.target("retire") == 1
    wait_until(lambda: circusd.pids("retire"), DEADLINE, "a retire process")

    wait_until(lambda: circusd.target("retire") == 0, DEADLINE, "the target back at 0")
    wait_until(lambda: circusd.pids("retire") == [], DEADLINE, "no retire process")
    # Stays gone for several check_delay periods, in which a respawn would happen.
    watch_until = time.monotonic() + 4 * CHECK_DELAY
    while time.monotonic() < watch_until:
        assert circusd.pids("retire") == []
        time.sleep(0.05)
    assert circusd.target("retire") == 0
    assert "retired (exit 0" in read(circusd.log)


def test_crashed_worker_is_respawned(circusd: Circusd) -> None:
    circusd.grow("crash")
    (first,) = wait_until(lambda: circusd.pids("crash"), DEADLINE, "a crash process")

    def replacement() -> list[int]:
        return [pid for pid in circusd.pids("crash") if pid != first]

    wait_until(replacement, DEADLINE, "a respawned crash process")
    assert circusd.target("crash") == 1
    assert "exited with 3: crash, circus respawns it" in read(circusd.log)


def test_circus_stop_keeps_the_target(circusd: Circusd) -> None:
    """Workers exiting 0 because circus stops the watcher are not retirements: the
    hook keeps the target, so `start` brings back as many workers as before."""
    circusd.grow("graceful")
    circusd.call("incr", name="graceful", nb=1)
    assert circusd.target("graceful") == 2

    def handlers_ready() -> list[int]:
        pids = circusd.pids("graceful")
        ready = {int(path.name) for path in circusd.ready.iterdir()}
        return pids if len(pids) == 2 and ready >= set(pids) else []

    before = wait_until(handlers_ready, DEADLINE, "2 graceful processes with their TERM handler")
    # waiting=True: without it circus answers `stop` before the watcher has stopped.
    circusd.call("stop", name="graceful", waiting=True)
    assert circusd.target("graceful") == 2
    assert "exited with 0 while the watcher stops: target kept" in read(circusd.log)

    circusd.call("start", name="graceful", waiting=True)
    wait_until(lambda: len(circusd.pids("graceful")) == 2, DEADLINE, "2 new graceful processes")
    assert set(circusd.pids("graceful")).isdisjoint(before)


def test_no_udp_socket_with_empty_multicast_endpoint(circusd: Circusd) -> None:
    process = psutil.Process(circusd.process.pid)
    connections = getattr(process, "net_connections", process.connections)
    assert connections(kind="udp") == []


def test_a_retired_worker_is_reaped_at_once_not_at_the_next_check(slow_circusd: Circusd) -> None:
    """The before_spawn hook's SIGCHLD reaper: with check_delay = 60 s, the retired
    process' slot is free (target 0, after_reap ran) within seconds, and the watcher
    grows again at once for new work."""
    circusd = slow_circusd
    circusd.grow("retire")
    (first,) = wait_until(lambda: circusd.pids("retire"), DEADLINE, "a retire process")
    began = time.monotonic()
    wait_until(lambda: circusd.target("retire") == 0, 10, "the retired process reaped")
    assert time.monotonic() - began < SLOW_CHECK_DELAY / 2
    assert "retired (exit 0" in read(circusd.log)
    assert "reaps exited workers at once" in read(circusd.log)
    circusd.call("incr", name="retire", nb=1)  # the watcher is active: incr spawns
    second = wait_until(
        lambda: [pid for pid in circusd.pids("retire") if pid != first], 10, "a new process"
    )
    assert second


def test_a_crash_is_reaped_at_once_and_respawned_at_the_check(slow_circusd: Circusd) -> None:
    """The reaper only reaps: a crashed process keeps its target, and circus respawns it
    at its periodic check as before (no faster crash loop)."""
    circusd = slow_circusd
    circusd.grow("crash")
    wait_until(lambda: circusd.pids("crash"), DEADLINE, "a crash process")
    wait_until(
        lambda: "exited with 3: crash, circus respawns it" in read(circusd.log),
        10,
        "the crash reaped",
    )
    assert circusd.target("crash") == 1
    assert circusd.pids("crash") == [], "not respawned before circus' next check"
