"""Operating it (issue 14), against a real circusd with the real master and workers:
``djmaster-config render`` makes the log folder, JSON log lines with a line per finished
job, a distinct wid per live worker, the Prometheus endpoint scraped, ``djmaster status``
(``--json``, ``--check``, ``--watch`` in a pseudo-terminal); and, on a circus.ini older
than the settings, a missing watcher reported by the master and by ``status --check``,
with the workers' lines kept out of circusd's own output.

One circusd serves the module's first tests (they only add jobs and read); the last
test runs its own. The module runs once per spawn mode: with ``spawn = "fork"`` the wid,
the JSON lines, status, the metrics and the workers' own output file are the forked
worker's, reached through its launcher.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from psycopg.conninfo import make_conninfo

from circus_djmaster.store import pgserver
from circus_djmaster.store.sync_executor import connect
from tests.acceptance.plugin_helpers import enqueue, titles
from tests.support.circus_run import (
    CircusRun,
    circus_env,
    circus_table,
    free_port,
    read,
    start_circus,
)
from tests.support.spawn import spawn_per_module
from tests.support.waiting import wait_until
from tests.support.worker_run import worker_pid, write_settings

#: The module runs once per spawn mode (its circusd is shared by its first tests).
spawn = spawn_per_module()
pytestmark = pytest.mark.usefixtures("spawn")

DEADLINE = 20.0
WATCHER = "djmaster-mail-primary"
#: A password libpq sends and the embedded server (trust) ignores: it must show nowhere.
SECRET = "hunter2-not-for-labels"
DJMASTER = [sys.executable, "-m", "circus_djmaster"]


@dataclass
class Ops:
    run: CircusRun
    settings: Path
    url: str
    metrics_port: int
    log_file: Path

    def djmaster(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*DJMASTER, *args, "--settings", str(self.settings)],
            env=self.run.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in read(self.log_file).splitlines():
            if line.startswith("{"):
                lines.append(json.loads(line))  # every line of ours parses
        return lines

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """``{(sample name, sorted labels): value}`` of one scrape of /metrics."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = response.read().decode("utf-8")
        assert SECRET not in body
        samples = {}
        for family in text_string_to_metric_families(body):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples


@pytest.fixture(scope="module")
def module_database(pg_server_url: str, template_database: str) -> Iterator[str]:
    name = f"djmaster_test_ops_{os.getpid()}"
    pgserver.drop_database(pg_server_url, name)
    url = pgserver.create_database(pg_server_url, name, template=template_database)
    yield make_conninfo(url, password=SECRET)
    pgserver.drop_database(pg_server_url, name)


@pytest.fixture(scope="module")
def ops(
    tmp_path_factory: pytest.TempPathFactory, module_database: str, spawn: str
) -> Iterator[Ops]:
    folder = tmp_path_factory.mktemp("ops")
    port = free_port()
    log_file = folder / "log" / "djmaster.log"  # the folder does not exist yet
    settings = write_settings(
        folder,
        # max_attempts 1: the job of a worker killed under it fails at once (not retried).
        workers=[
            {
                "name": "mail",
                "queues": ["q1"],
                "max_processes": 2,
                "sleep_delay": 0.2,
                "max_attempts": 1,
            }
        ],
        tables={"circus": circus_table(folder), "metrics": {"port": port}},
        log_file=str(log_file),
        log_format="json",
        log_level="info",
        monitor_interval=0.5,
        polling_interval=30.0,
    )
    env = circus_env({"DJMASTER_DATABASE_URL": module_database})
    for variable in ("COLUMNS", "LINES"):  # the terminal's size comes from the pty
        env.pop(variable, None)
    # The real command a user runs: it makes the log folder (circusd dropped every worker
    # watcher when it was missing: issue 14).
    rendered = subprocess.run(
        [
            sys.executable,
            "-m",
            "circus_djmaster.cli.config",
            "render",
            str(settings),
            "-o",
            str(folder / "circus.ini"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rendered.returncode == 0, rendered.stderr
    assert f"created folder {log_file.parent} (for log_file)" in rendered.stderr
    run = start_circus(settings, env, render=False)
    try:
        ops = Ops(run, settings, module_database, port, log_file)
        wait_until(
            lambda: any(
                line.get("role") == "master" and "master started" in line["message"]
                for line in ops.log_lines()
            ),
            DEADLINE,
            "the master to start",
        )
        yield ops
    except BaseException:
        print(read(log_file) + "\n--- circusd ---\n" + read(run.circus_log))
        raise
    finally:
        run.close()


@pytest.fixture
def conn(ops: Ops) -> Iterator[psycopg.Connection[Any]]:
    with connect(ops.url) as connection:
        yield connection


def worker_titles(ops: Ops) -> dict[int, str]:
    """{pid circus lists: the title of the process running its jobs} (the forked
    worker's behind a launcher)."""
    pids = ops.run.pids(WATCHER)
    shown = titles([worker_pid(pid) for pid in pids])
    return {pid: shown[worker_pid(pid)] for pid in pids if worker_pid(pid) in shown}


def wids_in_titles(ops: Ops) -> dict[int, int]:
    found = {}
    for pid, title in worker_titles(ops).items():
        match = re.search(r"@primary #(\d+)", title)
        if match:
            found[pid] = int(match.group(1))
    return found


def test_jobs_run_in_workers_with_distinct_wids_each_leaving_a_json_line(
    ops: Ops, conn: psycopg.Connection[Any], spawn: str
) -> None:
    ids = [enqueue(conn, "sleep_then_record", f"wid{n}", 2.0) for n in range(2)]
    # Two live workers at once: circus gives each its own wid (both logged worker[0]).
    busy = wait_until(
        lambda: len(wids_in_titles(ops)) == 2 and wids_in_titles(ops),
        DEADLINE,
        "two workers with their wid in the title",
    )
    assert sorted(busy.values()) == [1, 2]
    workers = {pid: worker_pid(pid) for pid in busy}  # circus' pid -> the job runner's
    assert (spawn == "fork") == all(workers[pid] != pid for pid in busy)
    status = json.loads(ops.djmaster("status", "--json").stdout)
    (group,) = status["databases"][0]["groups"]
    assert sorted(worker["wid"] for worker in group["workers"]) == [1, 2]
    assert group["state"] == "active" and status["problems"] == []
    if spawn == "fork":
        shown = {worker["pid"]: worker["worker_pid"] for worker in group["workers"]}
        assert shown == workers, "status names the launcher and its forked worker"
        assert all(worker["uss"] > 0 for worker in group["workers"])
        assert status["preloader"]["state"] == "active"

    def finished() -> list[dict[str, Any]]:
        return [
            line
            for line in ops.log_lines()
            if line.get("event") == "job_succeeded" and line["job_id"] in ids
        ]

    done = wait_until(lambda: len(finished()) == 2 and finished(), DEADLINE, "two job lines")
    for line in done:
        assert line["level"] == "INFO" and line["role"] == "worker"
        assert (line["queue"], line["callable"]) == ("q1", "tests.support.jobs:sleep_then_record")
        assert (line["attempt"], line["outcome"]) == (1, "SUCCEEDED")
        assert line["duration"] >= 2.0
        assert (line["watcher"], line["group"], line["database"]) == (WATCHER, "mail", "primary")
    assert {line["wid"] for line in done} == {1, 2}
    # "pid": the process' own; a forked worker's lines also name its launcher's pid,
    # the one circus, the master and locked_by know.
    assert {line["pid"] for line in done} == set(workers.values())
    if spawn == "fork":
        assert {line["launcher_pid"] for line in done} == set(busy)
    else:
        assert all("launcher_pid" not in line for line in done)
    assert SECRET not in read(ops.log_file)


def test_metrics_of_a_running_master(ops: Ops, conn: psycopg.Connection[Any], spawn: str) -> None:
    key = "metrics-kill"
    enqueue(conn, "hang", key, 60.0)
    for _ in range(3):
        enqueue(conn, "record", "later", delay=3600.0)

    def busy_pid() -> int | None:
        for pid, title in worker_titles(ops).items():
            if title.strip().endswith("[BUSY]"):
                return pid
        return None

    pid = wait_until(busy_pid, DEADLINE, "a busy worker")
    samples = wait_until(
        lambda: (
            (s := ops.scrape()).get(("djmaster_workers", (("state", "busy"), ("watcher", WATCHER))))
            and s
        ),
        DEADLINE,
        "the busy worker in the metrics",
    )
    group = (("database", "primary"), ("group", "mail"))
    assert samples[("djmaster_jobs_running", group)] == 1
    assert samples[("djmaster_jobs_scheduled", group)] == 3
    assert samples[("djmaster_jobs_ready", group)] == 0
    assert samples[("djmaster_jobs_failed", group)] == 0
    assert samples[("djmaster_oldest_ready_job_age_seconds", group)] == 0
    assert samples[("djmaster_database_up", (("database", "primary"),))] == 1
    assert samples[("djmaster_workers_started_total", (("watcher", WATCHER),))] >= 1
    assert samples[("djmaster_workers_resident_memory_bytes", (("watcher", WATCHER),))] > 10e6
    unique = samples.get(("djmaster_workers_unique_memory_bytes", (("watcher", WATCHER),)))
    if spawn == "fork":  # what max_memory compares: less than the RSS, shared pages out
        assert unique is not None and unique > 0
        assert unique < samples[("djmaster_workers_resident_memory_bytes", (("watcher", WATCHER),))]
    else:
        assert unique is None
    assert samples[("djmaster_watcher_blocked", (("watcher", WATCHER),))] == 0
    # A worker killed under its job (the forked one itself, behind its launcher): the
    # master releases the job, charged (it ran alone): its only attempt, so it fails.
    os.kill(worker_pid(pid), signal.SIGKILL)
    released = ("djmaster_job_releases_total", (("database", "primary"), ("outcome", "failed")))
    wait_until(lambda: ops.scrape().get(released, 0) >= 1, DEADLINE, "the release counted")
    assert ops.scrape()[("djmaster_jobs_failed", group)] == 1
    crashed = ("djmaster_worker_crashes_total", (("watcher", WATCHER),))
    wait_until(lambda: ops.scrape().get(crashed, 0) >= 1, DEADLINE, "the crash counted")
    conn.execute("DELETE FROM delayed_jobs")
    # Workers with nothing to do retire by themselves (exit 0): circus respawned the
    # crashed one, which finds nothing.
    retired = ("djmaster_worker_retirements_total", (("reason", "self"), ("watcher", WATCHER)))
    wait_until(lambda: ops.scrape().get(retired, 0) >= 1, DEADLINE, "a retirement counted")
    wait_until(lambda: not ops.run.pids(WATCHER), DEADLINE, "every worker retired")


def test_status_check_passes_on_a_healthy_setup(ops: Ops) -> None:
    result = ops.djmaster("status", "--check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("master: active (pid ")
    assert f"watcher {WATCHER}: " in result.stdout


def test_status_watch_redraws_in_place_within_the_terminal_and_ctrl_c_exits_0(ops: Ops) -> None:
    columns, rows = 50, 10
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    process = subprocess.Popen(
        [*DJMASTER, "status", "--watch", "--interval", "200ms", "--settings", str(ops.settings)],
        env=ops.run.env,
        stdin=follower,
        stdout=follower,
        stderr=follower,
        start_new_session=True,  # SIGINT at its default even under `pytest &`: conftest.py
    )
    os.close(follower)
    output = b""
    try:
        deadline = time.monotonic() + DEADLINE
        while output.count(b"\x1b[H\x1b[2J") < 3 and time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.5)
            if ready:
                output += os.read(leader, 65536)
        frames = output.decode("utf-8").split("\x1b[H\x1b[2J")[1:]
        assert len(frames) >= 3, output
        for frame in frames[:-1]:  # the last one may still be arriving
            lines = frame.replace("\r\n", "\n").rstrip("\n").split("\n")
            assert len(lines) <= rows - 1, lines
            assert all(len(line) < columns for line in lines), lines
            assert lines[0].startswith("djmaster status  ")
            assert any(line.startswith("database primary") for line in lines)
        process.send_signal(signal.SIGINT)  # Ctrl-C
        # Keep reading, as a terminal does: a full pty would block its last write, and
        # what it prints on the way out (a traceback) is the diagnosis if it hangs.
        after = b""
        deadline = time.monotonic() + DEADLINE
        while process.poll() is None and time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.2)
            if ready:
                try:
                    after += os.read(leader, 65536)
                except OSError:  # EIO: it closed its end of the pty (it is ending)
                    time.sleep(0.05)
        if process.poll() is None:
            pytest.fail(f"no exit after Ctrl-C: {_process_state(process.pid)}; {after[-2000:]!r}")
        assert process.returncode == 0, after[-2000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(leader)


def _process_state(pid: int) -> str:
    """What a process that should have ended is doing (for a failure message)."""
    parts = []
    for name in ("wchan", "stack"):
        try:
            parts.append(f"{name}: {Path(f'/proc/{pid}/{name}').read_text().strip()}")
        except OSError as error:
            parts.append(f"{name}: {error}")
    return "; ".join(parts)


def test_a_watcher_missing_from_circusd_is_named_with_its_causes_and_fails_status_check(
    tmp_path: Path, make_database: Any
) -> None:
    """circus.ini rendered before a group was added: its watcher is not in circusd. The
    master's message named one cause only; status did not show it (issue 14). Without
    log_file, the workers' lines go to a file of their own, not circusd's output."""
    url = make_database()
    settings = write_settings(
        tmp_path,
        workers=[{"name": "mail", "queues": ["q1"], "sleep_delay": 0.2}],
        tables={"circus": circus_table(tmp_path)},
        monitor_interval=0.5,
    )
    env = circus_env({"DJMASTER_DATABASE_URL": url})
    ini = tmp_path / "circus.ini"
    rendered = subprocess.run(
        [sys.executable, "-m", "circus_djmaster.cli.config", "render", "-o", str(ini)],
        env={**env, "DJMASTER_SETTINGS": str(settings)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rendered.returncode == 0, rendered.stderr
    with settings.open("a", encoding="utf-8") as file:  # a group added after rendering
        file.write('[[workers]]\nname = "late"\nqueues = ["q2"]\n')
    run = start_circus(settings, env, render=False)
    master_log = tmp_path / "djmaster-master.log"
    try:
        message = wait_until(
            lambda: next(
                (line for line in read(master_log).splitlines() if "is not in circusd" in line),
                None,
            ),
            DEADLINE,
            "the master to report the missing watcher",
        )
        assert "djmaster-late-primary" in message and "ERROR" in message
        assert "circusd could not create it" in message
        assert f"older than {settings}" in message
        status = subprocess.run(
            [*DJMASTER, "status", "--check", "--settings", str(settings)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert status.returncode == 1, status.stdout + status.stderr
        assert "watcher djmaster-late-primary: MISSING" in status.stdout
        assert "djmaster status: djmaster-late-primary: not in circusd" in status.stderr
        # The other watcher works, and its worker's lines are in their own file.
        with connect(url) as conn:
            job_id = enqueue(conn, "record", "apart")
        workers_log = tmp_path / "djmaster-workers.log"
        wait_until(
            lambda: re.search(
                rf"INFO worker\[0\]#1@primary circus_djmaster.worker: job {job_id} "
                r"tests\.support\.jobs:record \(queue q1, attempt 1\) succeeded in",
                read(workers_log),
            ),
            DEADLINE,
            "the job's line in the workers' log",
        )
        assert "circus_djmaster.worker" not in read(run.circus_log)
    except BaseException:
        print(read(master_log) + "\n--- circusd ---\n" + read(run.circus_log))
        raise
    finally:
        run.close()
