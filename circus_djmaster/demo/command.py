"""``djmaster demo``: the whole system on this machine in under a minute.

It starts an embedded PostgreSQL in a folder of its own, migrates, writes settings and
renders circus.ini, starts circusd with the master plugin, enqueues a few hundred jobs
over two queues (some fail once and are retried, one is scheduled a few seconds ahead),
shows workers scaling up from zero and retiring, then shuts everything down and prints
a summary. ``--keep`` leaves it running and says how to reach it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from circus_djmaster.api.jobs import JobCall, enqueue, enqueue_many
from circus_djmaster.circusd.client import SyncCircus
from circus_djmaster.config.render import render_ini
from circus_djmaster.config.settings import Settings, load_settings
from circus_djmaster.contracts.exit_codes import CliExit
from circus_djmaster.contracts.watchers import PLUGIN_WATCHER, watcher_name
from circus_djmaster.exceptions import CircusError, CircusTimeout, DemoError, DjmasterError
from circus_djmaster.store import pgserver, statements
from circus_djmaster.store.statements import GroupStats, JobFilter
from circus_djmaster.store.sync_executor import connect, execute, migrate

DATABASE = "djmaster_demo"
GROUPS = {"mail": 3, "reports": 2}  # group (= queue) -> max_processes
MAIL_JOBS, REPORT_JOBS, FLAKY_JOBS = 240, 60, 8
SCHEDULED_IN = 5.0
DEADLINE = 50.0  # the demo promises to finish within a minute


def default_folder() -> Path:
    return Path(tempfile.gettempdir()) / f"djmaster-demo-{os.geteuid()}"


def add_command(sub: Any) -> None:
    demo = sub.add_parser(
        "demo", help="run a self-contained demo: embedded Postgres, circusd, jobs, workers"
    )
    demo.add_argument("--keep", action="store_true", help="leave circusd and Postgres running")
    demo.add_argument(
        "--folder", type=Path, default=default_folder(), help="working folder (%(default)s)"
    )
    demo.set_defaults(func=cmd_demo)


@dataclass
class Progress:
    totals: dict[str, int]
    started: float = field(default_factory=time.monotonic)
    peak_workers: dict[str, int] = field(default_factory=dict)
    retried: int = 0

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def cmd_demo(args: argparse.Namespace) -> int:
    folder: Path = args.folder.resolve()
    circusd: subprocess.Popen[bytes] | None = None
    settings_path = folder / "djmaster.toml"
    keep = bool(args.keep)
    try:
        say(f"demo folder: {folder}")
        folder.mkdir(parents=True, exist_ok=True)
        stop_previous_run(settings_path)
        reset_files(folder)
        say("starting the embedded PostgreSQL ...")
        server_url = pgserver.start_embedded(folder / "pgdata")
        pgserver.drop_database(server_url, DATABASE)
        url = pgserver.create_database(server_url, DATABASE)
        with connect(url) as conn:
            migrate(conn)
            conn.execute("CREATE TABLE demo_failed_once (name text PRIMARY KEY)")
        os.environ["DJMASTER_DATABASE_URL"] = url
        write_settings(settings_path)
        settings = load_settings(settings_path)
        ini = folder / "circus.ini"
        ini.write_text(render_ini(settings), encoding="utf-8")
        say("starting circusd with the djmaster plugin (workers: 0 until jobs arrive) ...")
        circusd = subprocess.Popen(
            [str(Path(sys.executable).with_name("circusd")), str(ini)],
            cwd=folder,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # --keep: it outlives this command
        )
        client = Circus(settings.circus.endpoint)
        wait_for(lambda: client.pids(PLUGIN_WATCHER), 20, "the master plugin to start")
        progress = enqueue_demo_jobs(url)
        watch(settings, url, client, progress)
        say("all jobs done; waiting for the workers to retire ...")
        wait_for(lambda: not any(client.pids(w) for w in watchers()), 20, "workers to retire")
        summary(progress, folder, settings.log_file)
        if keep:
            print_keep_hints(settings_path, settings.circus.endpoint, folder)
            return CliExit.OK
        return CliExit.OK
    except (DjmasterError, psycopg.Error, OSError) as exc:
        print(f"djmaster demo: {exc}", file=sys.stderr)
        print(f"  logs: {folder / 'log'}", file=sys.stderr)
        keep = False
        return CliExit.FAILED
    finally:
        if not keep:
            shutdown(circusd, settings_path, folder)


def say(text: str) -> None:
    print(text, flush=True)


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise DemoError(f"timed out waiting for {what}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def reset_files(folder: Path) -> None:
    for name in ("djmaster.toml", "circus.ini"):
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()
    shutil.rmtree(folder / "log", ignore_errors=True)
    (folder / "log").mkdir()


def write_settings(path: Path) -> None:
    ports = [free_port() for _ in range(3)]
    groups = "\n".join(
        f'[[workers]]\nname = "{name}"\nqueues = ["{name}"]\nmax_processes = {n}\n'
        f"max_threads = 2\nsleep_delay = 0.5\n"
        for name, n in GROUPS.items()
    )
    path.write_text(
        f"""# Written by `djmaster demo`.
app = "circus_djmaster.demo.jobs"
polling_interval = "30s"
monitor_interval = "1s"
log_file = "log/djmaster.log"
pid_file = "log/djmaster.pid"

[databases]
primary = "${{DJMASTER_DATABASE_URL}}"

{groups}
[circus]
endpoint = "tcp://127.0.0.1:{ports[0]}"
pubsub_endpoint = "tcp://127.0.0.1:{ports[1]}"
stats_endpoint = "tcp://127.0.0.1:{ports[2]}"
check_delay = "1s"
logoutput = "log/circusd.log"
""",
        encoding="utf-8",
    )


def watchers() -> list[str]:
    return [watcher_name(group, "primary") for group in GROUPS]


def enqueue_demo_jobs(url: str) -> Progress:
    rng = random.Random(7)
    flaky = set(rng.sample(range(MAIL_JOBS + REPORT_JOBS), FLAKY_JOBS))
    calls = [
        JobCall(
            "circus_djmaster.demo.jobs:send_mail",
            [n, rng.uniform(0.02, 0.08), n in flaky],
            queue="mail",
        )
        for n in range(MAIL_JOBS)
    ] + [
        JobCall(
            "circus_djmaster.demo.jobs:build_report",
            [n, rng.uniform(0.1, 0.4), MAIL_JOBS + n in flaky],
            queue="reports",
        )
        for n in range(REPORT_JOBS)
    ]
    enqueue_many(calls, database_url=url)
    enqueue(
        "circus_djmaster.demo.jobs:build_report",
        [REPORT_JOBS, 0.1],
        queue="reports",
        delay=SCHEDULED_IN,
        database_url=url,
    )
    say(
        f"enqueued {MAIL_JOBS} mail and {REPORT_JOBS + 1} report jobs ({FLAKY_JOBS} fail "
        f"once and are retried; 1 report scheduled {SCHEDULED_IN:g}s ahead)"
    )
    return Progress({"mail": MAIL_JOBS, "reports": REPORT_JOBS + 1})


def watch(settings: Settings, url: str, client: Circus, progress: Progress) -> None:
    """Print progress until every job is done: one line, redrawn in place on a
    terminal (cut to its width, so it never wraps), a line a second otherwise; the
    counts come from the statements ``djmaster status`` runs."""
    tty = sys.stdout.isatty()
    last_line = 0.0
    with connect(url) as conn:
        while True:
            stats = {
                group.name: execute(
                    conn,
                    statements.group_stats(JobFilter.of(group), lock_timeout=settings.lock_timeout),
                )
                for group in settings.workers
            }
            workers = {
                group: len(client.pids(watcher_name(group, "primary"))) for group in progress.totals
            }
            line = progress_line(progress, stats, workers)
            left = sum(s.ready + s.running + s.scheduled for s in stats.values())
            if not left:
                print(("\r\x1b[K" if tty else "") + line, flush=True)
                return
            if tty:
                width = shutil.get_terminal_size().columns
                print("\r\x1b[K" + fit_line(line, width), end="", flush=True)
            elif time.monotonic() - last_line >= 1.0:
                print(line, flush=True)
                last_line = time.monotonic()
            if progress.elapsed() > DEADLINE:
                raise DemoError("the jobs did not finish in time; see the logs")
            time.sleep(0.25)


def progress_line(progress: Progress, stats: dict[str, GroupStats], workers: dict[str, int]) -> str:
    """``12.3s mail 200/240 reports 40/61  workers 3+2  retries: 4 due in 2s`` (under 80
    columns for the demo's groups); ``(back-off)`` when only retries are left to wait for,
    so a line that stops moving says why."""
    done = []
    for group, total in progress.totals.items():
        group_stats = stats[group]
        left = group_stats.ready + group_stats.running + group_stats.scheduled
        progress.peak_workers[group] = max(progress.peak_workers.get(group, 0), workers[group])
        done.append(f"{group} {total - left:{len(str(total))}d}/{total}")
    counts = "+".join(str(workers[group]) for group in progress.totals)
    line = f"{progress.elapsed():4.1f}s " + " ".join(done) + f"  workers {counts}"
    retrying = sum(s.retrying for s in stats.values())
    progress.retried = max(progress.retried, retrying)
    if retrying:
        soonest = min(
            (s.next_retry_in for s in stats.values() if s.next_retry_in is not None), default=0.0
        )
        line += f"  retries: {retrying} due in {max(soonest, 0.0):.0f}s"
        if not any(s.ready or s.running for s in stats.values()):
            line += " (back-off)"
    return line


def fit_line(line: str, columns: int) -> str:
    """``line`` cut to a terminal ``columns`` wide (the last column left free: some
    terminals wrap as soon as it is written)."""
    width = max(columns - 1, 20)
    return line if len(line) <= width else line[: width - 1] + "…"


def summary(progress: Progress, folder: Path, log_file: Path | None) -> None:
    total = sum(progress.totals.values())
    peaks = ", ".join(f"{group} {n}" for group, n in progress.peak_workers.items())
    say(
        f"done: {total} jobs in {progress.elapsed():.1f}s; peak workers: {peaks} "
        f"(max_processes: {', '.join(f'{g} {n}' for g, n in GROUPS.items())}); "
        f"{FLAKY_JOBS} jobs failed once and succeeded on retry"
    )
    say(f"logs: {log_file or folder / 'log'}")


def print_keep_hints(settings_path: Path, endpoint: str, folder: Path) -> None:
    url = os.environ["DJMASTER_DATABASE_URL"]
    say("\nstill running (--keep). Try:")
    say(f"  export DJMASTER_DATABASE_URL='{url}'")
    say(f"  djmaster status --settings {settings_path}")
    say("  djmaster enqueue circus_djmaster.demo.jobs:send_mail --args '[1, 0.5]' --queue mail")
    say(f"  circusctl --endpoint {endpoint} status")
    say(f"  circusctl --endpoint {endpoint} quit          # stop circusd and the workers")
    say(f"  djmaster devdb stop --folder {folder}        # stop PostgreSQL")


def stop_previous_run(settings_path: Path) -> None:
    """A previous ``--keep`` run may still be running: quit its circusd first."""
    if not settings_path.exists():
        return
    with contextlib.suppress(Exception):
        settings = load_settings(settings_path)
        client = Circus(settings.circus.endpoint, timeout=1.0)
        if client.call("quit") is not None:
            say("stopping the circusd of a previous demo ...")
            time.sleep(0.5)
            wait_for(lambda: client.call("list") is None, 30, "the previous circusd to quit")


def shutdown(circusd: subprocess.Popen[bytes] | None, settings_path: Path, folder: Path) -> None:
    if circusd is not None and circusd.poll() is None:
        with contextlib.suppress(Exception):
            settings = load_settings(settings_path)
            Circus(settings.circus.endpoint).call("quit")
        try:
            circusd.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(circusd.pid, signal.SIGKILL)
            circusd.wait()
    try:
        pgserver.stop_embedded(folder / "pgdata")
    except RuntimeError as exc:
        print(f"djmaster demo: {exc}", file=sys.stderr)
        return
    say("stopped circusd and PostgreSQL")


class Circus:
    """The few circusd commands the demo needs; None when circusd does not answer."""

    def __init__(self, endpoint: str, timeout: float = 3.0) -> None:
        self.endpoint = endpoint
        self.timeout = timeout

    def call(self, command: str, **props: Any) -> dict[str, Any] | None:
        try:
            with SyncCircus(self.endpoint, timeout=self.timeout) as circus:
                return circus.call(command, **props)
        except (CircusError, CircusTimeout):
            return None

    def pids(self, watcher: str) -> list[int]:
        answer = self.call("list", name=watcher)
        return [int(pid) for pid in answer.get("pids") or []] if answer else []
