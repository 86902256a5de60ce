"""Every example runs end to end, exactly as its README says.

Each test copies an example folder to a temporary one (the repository stays clean),
extracts the README's ```sh block and runs it with ``bash -euo pipefail`` there, with
the venv's bin folder first on PATH and the embedded PostgreSQL in a folder of the
test's own (``DJMASTER_DEVDB_FOLDER``). The examples use fixed circus ports, so they run
one at a time. Whatever happens, circusd and the database are stopped afterwards.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import psycopg
import pytest

from circus_djmaster.config.settings import load_settings

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = REPO_ROOT / "examples"
BIN = Path(sys.executable).parent
MARKER = "DJMASTER_EXAMPLE_TEST"  # in the environment of every process a test starts
SCRIPT_TIMEOUT = 90


def readme_script(example: str) -> str:
    """The one ```sh block of the example's README."""
    text = (EXAMPLES / example / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```sh\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)
    assert len(blocks) == 1, f"examples/{example}/README.md must hold one ```sh block"
    return blocks[0]


@dataclass
class Example:
    folder: Path  # the temporary copy the commands ran in
    env: dict[str, str]
    result: subprocess.CompletedProcess[str]

    @property
    def output(self) -> str:
        return self.result.stdout

    def log(self) -> str:
        return (self.folder / "log" / "djmaster.log").read_text(encoding="utf-8")

    def database_url(self) -> str:
        """The URL of the example's embedded database (still running until teardown)."""
        started = self.devdb("start")
        return started.stdout.strip().split("=", 1)[1].strip("'")

    def devdb(self, action: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "djmaster"), "devdb", action],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )

    def describe(self) -> str:
        logs = self.folder / "log"
        tails = "".join(
            f"\n--- {path.name} (tail) ---\n" + "\n".join(path.read_text().splitlines()[-40:])
            for path in sorted(logs.glob("*.log"))
        )
        return (
            f"exit {self.result.returncode}\n--- stdout ---\n{self.result.stdout}"
            f"\n--- stderr ---\n{self.result.stderr}{tails}"
        )


def marked_processes(token: str) -> list[psutil.Process]:
    """Live processes started by this test (they carry its marker in their environment)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and proc.environ().get(MARKER) == token:
                found.append(proc)
        except psutil.Error:
            continue
    return found


# The web examples' servers listen on fixed ports too.
WEB_PORTS = {"fastapi": 8765, "flask": 8766}


def busy_ports(settings: Path, extra: tuple[int, ...] = ()) -> list[str]:
    """The example's circus endpoints (and ``extra`` ports) another process listens on."""
    circus = load_settings(settings).circus
    wanted = {
        int(endpoint.rsplit(":", 1)[1]) for endpoint in (circus.endpoint, circus.pubsub_endpoint)
    } | set(extra)
    busy = set()
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port in wanted:
            busy.add(conn.laddr.port)
    return [f"127.0.0.1:{port}" for port in sorted(busy)]


@pytest.fixture
def run_example(tmp_path: Path) -> Iterator[Callable[[str], Example]]:
    token = uuid.uuid4().hex
    started: list[Example] = []
    # Not under tmp_path: as root the embedded server runs as the user "pgserver", which
    # must reach its folder, and every pytest session that starts makes
    # /tmp/pytest-of-root private again (mode 0700), locking it out mid-test.
    devdb = Path(tempfile.mkdtemp(prefix="djmaster-example-"))

    def run(name: str) -> Example:
        folder = tmp_path / name
        shutil.copytree(
            EXAMPLES / name,
            folder,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "log", "circus.ini"),
        )
        web = (WEB_PORTS[name],) if name in WEB_PORTS else ()
        busy = busy_ports(folder / "djmaster.toml", web)
        if busy:
            pytest.fail(f"another process listens on {', '.join(busy)}, the example's ports")
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in {"DJMASTER_DATABASE_URL", "DJANGO_SETTINGS_MODULE", "PYTHONPATH"}
        }
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        env["DJMASTER_DEVDB_FOLDER"] = str(devdb)
        env[MARKER] = token
        example = Example(folder, env, subprocess.CompletedProcess([], -1, "", ""))
        started.append(example)
        try:
            example.result = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", readme_script(name)],
                cwd=folder,
                env=env,
                capture_output=True,
                text=True,
                timeout=SCRIPT_TIMEOUT,
            )
        except subprocess.TimeoutExpired as exc:
            example.result = subprocess.CompletedProcess(
                exc.cmd, -1, _text(exc.stdout), _text(exc.stderr) + "\n(timed out)"
            )
        return example

    try:
        yield run
    finally:
        for example in started:
            stop_everything(example, token)
        shutil.rmtree(devdb, ignore_errors=True)


def _cmdline(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


def _text(data: str | bytes | None) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else data or ""


def stop_everything(example: Example, token: str) -> None:
    """circusctl quit if circusd still runs, stop the database, kill what is left."""
    if any("circusd" in _cmdline(proc) for proc in marked_processes(token)):
        endpoint = load_settings(example.folder / "djmaster.toml").circus.endpoint
        subprocess.run(
            [str(BIN / "circusctl"), "--endpoint", endpoint, "--timeout", "10", "quit"],
            env=example.env,
            capture_output=True,
            timeout=30,
            check=False,
        )
    subprocess.run(
        [str(BIN / "djmaster"), "devdb", "stop"],
        env=example.env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    deadline = time.monotonic() + 15
    while (left := marked_processes(token)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for proc in left:
        with contextlib.suppress(psutil.Error):
            proc.kill()


def test_basic_example_runs_as_its_readme_says(run_example: Callable[[str], Example]) -> None:
    example = run_example("basic")
    assert example.result.returncode == 0, example.describe()
    out = example.output
    assert "enqueued 23 jobs" in out, example.describe()
    assert "no job left" in out, example.describe()
    # The status printed after `djmaster wait`: nothing to do, every worker retired.
    final = out.split("no job left", 1)[1]
    assert "group mail (mail)  watcher djmaster-mail-primary: active, 0/2 workers" in final
    assert "group reports (reports)  watcher djmaster-reports-primary: active, 0/1 workers" in final
    assert final.count("ready 0  running 0  scheduled 0  failed 0") == 2, example.describe()
    assert "\n    pid " not in final, example.describe()  # no worker left
    assert final.rstrip().endswith("ok"), example.describe()  # circusctl quit
    # Every job ran once.
    log = example.log()
    assert log.count("welcome mail sent to user") == 20, example.describe()
    assert log.count("built") == 3 and "report for 2026-11 built" in log, example.describe()
    assert " failed after " not in log, example.describe()


def test_django_example_runs_as_its_readme_says(run_example: Callable[[str], Example]) -> None:
    example = run_example("django")
    assert example.result.returncode == 0, example.describe()
    out = example.output
    placed = re.search(r"^order (\d+) placed, confirmation job (\d+)$", out, flags=re.MULTILINE)
    assert placed, example.describe()
    order_id = int(placed.group(1))
    assert re.search(
        r"^payment for order \d+ declined: rolled back, no order and no job$", out, re.MULTILINE
    ), example.describe()
    assert "no job left" in out, example.describe()
    final = out.split("no job left", 1)[1]
    # list_orders: the committed order is confirmed, the rolled-back one does not exist.
    assert f"order {order_id} (book): confirmed\n1 order(s)\n" in final, example.describe()
    assert "lamp" not in final, example.describe()
    assert "group orders (orders)  watcher djmaster-orders-primary: active, 0/1 workers" in final
    assert "ready 0  running 0  scheduled 0  failed 0" in final, example.describe()
    assert "\n    pid " not in final, example.describe()  # no worker left
    assert final.rstrip().endswith("ok"), example.describe()  # circusctl quit
    log = example.log()
    assert log.count(" confirmed") == 1 and f"order {order_id} confirmed" in log, log
    assert " failed after " not in log and "cannot run" not in log, log
    # The database agrees: one confirmed order, no job left, not even a failed one.
    with psycopg.connect(example.database_url()) as conn:
        orders = conn.execute("SELECT id, item, status FROM orders_order").fetchall()
        jobs = conn.execute("SELECT count(*) FROM delayed_jobs").fetchone()
    assert orders == [(order_id, "book", "confirmed")]
    assert jobs == (0,)


@pytest.mark.parametrize(
    ("name", "server_log"), [("fastapi", "uvicorn.log"), ("flask", "flask.log")]
)
def test_web_examples_run_as_their_readmes_say(
    run_example: Callable[[str], Example], name: str, server_log: str
) -> None:
    example = run_example(name)
    assert example.result.returncode == 0, example.describe()
    out = example.output
    saved = re.search(r"^signup (\d+) saved, welcome job (\d+)$", out, flags=re.MULTILINE)
    assert saved, example.describe()
    signup_id = int(saved.group(1))
    assert re.search(
        r"^signup of bob@example\.com declined: rolled back, no signup and no job \(402\)$",
        out,
        re.MULTILINE,
    ), example.describe()
    assert re.search(r"^newsletter job \d+$", out, re.MULTILINE), example.describe()
    assert "no job left" in out, example.describe()
    final = out.split("no job left", 1)[1]
    # client.py list: ada is welcomed, bob's signup was rolled back with its job.
    assert f"signup {signup_id} ada@example.com: welcomed\n1 signup(s)\n" in final, out
    assert final.rstrip().endswith("ok"), example.describe()  # circusctl quit
    log = example.log()
    assert log.count("welcome mail sent to signup") == 1, log
    assert f"welcome mail sent to signup {signup_id} (ada@example.com)" in log, log
    assert log.count("newsletter 2026-12 sent") == 1, log
    assert " failed after " not in log and "cannot run" not in log, log
    # The server answered the requests the client made.
    served = (example.folder / "log" / server_log).read_text(encoding="utf-8")
    assert served.count("POST /signups") == 2 and "GET /signups" in served, served
    with psycopg.connect(example.database_url()) as conn:
        signups = conn.execute("SELECT id, email, welcomed_at IS NOT NULL FROM signups").fetchall()
        jobs = conn.execute("SELECT count(*) FROM delayed_jobs").fetchone()
    assert signups == [(signup_id, "ada@example.com", True)]
    assert jobs == (0,)
