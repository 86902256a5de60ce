"""A real circusd with the master plugin, for B3 and B5.

``Circus.start(ctx, folder, workers, databases)`` writes a djmaster.toml, renders
circus.ini with ``djmaster-config render``, starts ``circusd`` and waits until the master
logged that it started and listens; :meth:`Circus.close` quits circusd and kills what is
left. :class:`MasterLog` reads the master's and workers' log lines with their timestamps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psutil

from benchmarks.common import BIN, BenchError, Context, bench_env, free_port, tail, wait_for
from benchmarks.peers.ours import write_settings

PLUGIN_WATCHER = "plugin:djmaster"
START_TIMEOUT = 30.0


def not_available(error: BaseException) -> str:
    """Why circusd with the plugin could not be used, for the results file."""
    if isinstance(error, BenchError) and str(error).startswith("not available"):
        return str(error)
    return f"not available: {type(error).__name__}: {error}"


def watcher_name(group: str, database: str) -> str:
    return f"djmaster-{group}-{database}"


@dataclasses.dataclass
class Circus:
    ctx: Context
    folder: Path
    process: subprocess.Popen[bytes]
    endpoint: str
    client: Any

    @property
    def log_file(self) -> Path:
        return self.folder / "djmaster.log"

    @classmethod
    def start(
        cls,
        ctx: Context,
        folder: Path,
        *,
        top: dict[str, Any],
        workers: list[dict[str, Any]],
        databases: dict[str, str],
        env: Mapping[str, str],
        check_delay: float = 1.0,
    ) -> Circus:
        """Run circusd on these settings; raise BenchError("not available: ...") if the
        master does not come up."""
        from circus.client import CircusClient

        endpoint = f"tcp://127.0.0.1:{free_port()}"
        settings = write_settings(
            folder / "djmaster.toml",
            top={
                "log_file": str(folder / "djmaster.log"),
                "pid_file": str(folder / "master.pid"),
                "log_level": "debug",
                **top,
            },
            workers=workers,
            databases=databases,
            circus={
                "endpoint": endpoint,
                "pubsub_endpoint": f"tcp://127.0.0.1:{free_port()}",
                "stats_endpoint": f"tcp://127.0.0.1:{free_port()}",
                "check_delay": check_delay,
                "logoutput": str(folder / "circusd.log"),
            },
        )
        ini = folder / "circus.ini"
        render = subprocess.run(
            [
                *(str(BIN / "djmaster-config"), "render", str(settings), "-o", str(ini)),
                *("--python", str(ctx.installed_python())),
            ],
            capture_output=True,
            text=True,
            check=False,
            env=bench_env(**env),
        )
        if render.returncode != 0:
            raise BenchError(f"not available: djmaster-config render failed: {render.stderr}")
        process = ctx.processes.spawn(
            [str(BIN / "circusd"), str(ini)],
            env=bench_env(**env),
            log=folder / "circusd.out",
            cwd=folder,
        )
        circus = cls(ctx, folder, process, endpoint, CircusClient(endpoint=endpoint, timeout=5))
        try:
            circus.wait_for_master(START_TIMEOUT, len(databases))
        except BaseException:
            circus.close()
            raise
        return circus

    def wait_for_master(self, timeout: float, databases: int) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise BenchError(
                    f"not available: circusd exited with {self.process.returncode}: "
                    f"{tail(self.folder / 'circusd.log', 5)}"
                )
            text = self.log_file.read_text("utf-8") if self.log_file.exists() else ""
            return "master started" in text and text.count("listening for new jobs") >= databases

        try:
            wait_for(ready, timeout, "the master plugin", interval=0.1)
        except BenchError:
            raise BenchError(
                f"not available: the master did not start and listen within {timeout:g}s; "
                f"master log: {tail(self.log_file, 8)} circusd log: "
                f"{tail(self.folder / 'circusd.log', 8)}"
            ) from None

    def call(self, command: str, **props: Any) -> dict[str, Any]:
        """One circus command, retried while circus' command lock is busy."""
        deadline = time.monotonic() + 20
        while True:
            try:
                answer = self.client.call({"command": command, "properties": props})
            except Exception as error:
                answer = {"status": "error", "reason": str(error)}
            if answer.get("status") != "error":
                return dict(answer)
            if time.monotonic() > deadline:
                raise BenchError(f"circus {command} {props}: {answer.get('reason')}")
            time.sleep(0.05)

    def pids(self, watcher: str) -> list[int]:
        return [int(pid) for pid in self.call("list", name=watcher).get("pids", [])]

    def plugin_pid(self) -> int:
        pid_file = self.folder / "master.pid"
        return int(pid_file.read_text().strip())

    def numprocesses(self, watcher: str) -> int:
        answer = self.call("get", name=watcher, keys=["numprocesses"])
        return int(answer["options"]["numprocesses"])

    def wait_idle(self, watchers: list[str], timeout: float = 30.0) -> None:
        """Until no watcher has a process nor wants one (retired workers reaped and the
        watchers' targets lowered back to 0 by the reap hook)."""
        wait_for(
            lambda: not any(self.pids(w) or self.numprocesses(w) for w in watchers),
            timeout,
            "the workers to retire",
            interval=0.05,
        )

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(Exception):
                self.client.call({"command": "quit", "properties": {}})
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(15)
        with contextlib.suppress(Exception):
            self.client.stop()
        self.ctx.processes.stop(self.process, timeout=1)


# --- the log --------------------------------------------------------------------------------

LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) \[(\d+)\] \w+ (.*)$")


@dataclasses.dataclass(frozen=True)
class LogLine:
    time: float  # epoch seconds: the log's local time, truncated to the ms, + 0.5 ms
    pid: int
    text: str


class MasterLog:
    """The lines appended to a log file since the last :meth:`mark`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def mark(self) -> None:
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def lines(self) -> list[LogLine]:
        with open(self.path, "rb") as file:
            file.seek(self.offset)
            data = file.read().decode("utf-8", errors="replace")
        found = []
        for raw in data.splitlines():
            match = LINE.match(raw)
            if match:
                stamp = time.mktime(time.strptime(match.group(1), "%Y-%m-%d %H:%M:%S"))
                found.append(
                    LogLine(
                        stamp + (int(match.group(2)) + 0.5) / 1000,
                        int(match.group(3)),
                        match.group(4),
                    )
                )
        return found

    def first(self, pattern: str, pid: int | None = None) -> LogLine | None:
        regex = re.compile(pattern)
        for line in self.lines():
            if regex.search(line.text) and (pid is None or line.pid == pid):
                return line
        return None


def process_rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system
