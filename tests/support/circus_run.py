"""A real ``circusd`` on a rendered ``circus.ini``, for acceptance tests of the master.

``start_circus(settings_path, env)`` renders the ini next to the settings (free loopback
ports are the test's job: see :func:`circus_table`), starts ``circusd`` from the bin
folder of this interpreter, waits until it answers, and returns a :class:`CircusRun`.
``CircusRun.close()`` quits it and kills whatever is left (circusd and every process
of its session) however the test ended; use it in a ``finally`` or a fixture.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import zmq

from circus_djmaster.circusd.client import SyncCircus
from circus_djmaster.config.render import render_ini
from circus_djmaster.config.settings import Settings, load_settings
from circus_djmaster.exceptions import CircusError, CircusTimeout

from .waiting import wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
CIRCUSD = Path(sys.executable).with_name("circusd")
CIRCUSCTL = Path(sys.executable).with_name("circusctl")
PLUGIN_WATCHER = "plugin:djmaster"
START_TIMEOUT = 20.0
QUIT_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def circus_table(folder: Path, *, check_delay: float = 0.5) -> dict[str, Any]:
    """A ``[circus]`` settings table on free loopback ports, logging into ``folder``."""
    return {
        "endpoint": f"tcp://127.0.0.1:{free_port()}",
        "pubsub_endpoint": f"tcp://127.0.0.1:{free_port()}",
        "stats_endpoint": f"tcp://127.0.0.1:{free_port()}",
        "check_delay": check_delay,
        "logoutput": str(folder / "circusd.log"),
    }


def circus_env(database_urls: Mapping[str, str], **extra: str) -> dict[str, str]:
    """circusd's environment: the repository importable (job functions in tests.support)
    and the database URL variables. Workers and the plugin inherit it (copy_env)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.update(database_urls)
    env.update(extra)
    return env


def read(path: Path | None) -> str:
    if path is None or not path.exists():
        return ""
    return path.read_text(encoding="utf-8", errors="replace")


@dataclass
class CircusRun:
    process: subprocess.Popen[bytes]
    settings: Settings
    ini: Path
    env: dict[str, str]
    context: Any = field(default=None, repr=False)
    client: Any = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return self.settings.circus.endpoint

    @property
    def circus_log(self) -> Path:
        return Path(self.settings.circus.logoutput)

    @property
    def log_file(self) -> Path:
        """Where master and workers log (the settings' log_file, required here)."""
        assert self.settings.log_file is not None, "tests set log_file"
        return self.settings.log_file

    def logs(self) -> str:
        return read(self.log_file) + "\n--- circusd ---\n" + read(self.circus_log)

    # --- circus commands ----------------------------------------------------------

    def call(self, command: str, timeout: float = START_TIMEOUT, **props: Any) -> dict[str, Any]:
        """One command; retried while circus' global command lock is busy (docs/design.md §9)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.client.call(command, **props)
            except (CircusError, CircusTimeout) as error:
                if time.monotonic() > deadline:
                    raise AssertionError(f"circus {command} {props}: {error}") from error
            time.sleep(0.05)

    def pids(self, watcher: str) -> list[int]:
        return sorted(int(pid) for pid in self.call("list", name=watcher)["pids"])

    def status(self, watcher: str) -> str:
        return str(self.call("status", name=watcher)["status"])

    def target(self, watcher: str) -> int:
        return int(self.call("get", name=watcher, keys=["numprocesses"])["options"]["numprocesses"])

    def plugin_pid(self) -> int | None:
        try:
            pids = self.pids(PLUGIN_WATCHER)
        except AssertionError:
            return None
        return pids[0] if len(pids) == 1 else None

    def ctl(self, *args: str, timeout: float = QUIT_TIMEOUT) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(CIRCUSCTL), "--endpoint", self.endpoint, "--timeout", "10", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def wait_for_master(self, timeout: float = START_TIMEOUT) -> int:
        """The plugin's pid once it runs and logged that it started."""

        def running() -> int | None:
            pid = self.plugin_pid()
            if (
                pid is not None
                and f"[{pid}]" in read(self.log_file)
                and "master started" in read(self.log_file)
            ):
                return pid
            return None

        return wait_until(running, timeout, "the master plugin to start")

    # --- teardown -------------------------------------------------------------------

    def close(self) -> None:
        """Quit circusd (graceful), then kill anything left of its process tree."""
        survivors: list[psutil.Process] = []
        with contextlib.suppress(psutil.Error):
            survivors = psutil.Process(self.process.pid).children(recursive=True)
        if self.process.poll() is None:
            with contextlib.suppress(Exception):
                self.client.call("quit")
            try:
                self.process.wait(timeout=QUIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=QUIT_TIMEOUT)
        for child in survivors:
            with contextlib.suppress(psutil.Error):
                child.send_signal(signal.SIGKILL)
        with contextlib.suppress(Exception):
            self.client.close()
        with contextlib.suppress(Exception):
            self.context.destroy(linger=0)


def start_circus(
    settings_path: Path,
    env: Mapping[str, str],
    *,
    wrap: Callable[[list[str]], list[str]] = list,
    where: str = "",
    python: Path | None = None,
    render: bool = True,
) -> CircusRun:
    """Render ``circus.ini`` next to ``settings_path`` and run circusd on it.

    ``wrap`` turns circusd's command line into the one to run (e.g. inside a network
    namespace, tests/support/netns.py); ``where`` names that place in messages.
    ``python``: another interpreter (of a venv with circus-djmaster's dependencies) to
    run circusd, the master and the workers with; this one by default. ``render=False``
    runs the ``circus.ini`` already there (rendered by the test, e.g. with the CLI).
    """
    settings = load_settings(settings_path)
    ini = settings_path.with_name("circus.ini")
    interpreter = python or Path(sys.executable)
    if render:
        ini.write_text(render_ini(settings, python=str(interpreter)), encoding="utf-8")
    circusd = CIRCUSD if python is None else python.with_name("circusd")
    process = subprocess.Popen(
        wrap([str(circusd), str(ini)]),
        cwd=settings_path.parent,
        env=dict(env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    context = zmq.Context()
    client = SyncCircus(settings.circus.endpoint, timeout=2.0, context=context)
    run = CircusRun(process, settings, ini, dict(env), context, client)
    try:

        def answers() -> bool:
            if process.poll() is not None:
                raise AssertionError(
                    f"circusd exited with {process.returncode}:\n{read(run.circus_log)}"
                )
            try:
                client.call("list")
            except (CircusError, CircusTimeout):
                return False
            return True

        wait_until(answers, START_TIMEOUT, f"circusd{where} to answer")
    except BaseException:
        run.close()
        raise
    return run
