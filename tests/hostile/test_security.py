"""Security checks (issue 5, item 7): no database password in any ``ps`` line, process
title, rendered ini, file written by ``djmaster-config init`` or log; circus endpoints on
loopback and no multicast; circusd listens on loopback only.

One circusd (module fixture) runs the master and a busy worker with three databases,
each URL read from the environment (``${VAR}``) and each holding a password:

* ``primary``: the test database (trust authentication: the password is ignored);
* ``secondary``: a fake PostgreSQL server on loopback that refuses the password (a
  database outage with a wrong password: the master retries it and logs each retry);
* ``broken``: a URL whose password has a stray ``%`` (malformed percent-encoding), a
  common mistake with generated passwords.

The environment (``/proc/PID/environ``) holds the secrets on purpose and is out of scope.
SQL built from values: test_sql_safety.py.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
from circus.config import get_config

from circus_djmaster.config.render import render_ini
from circus_djmaster.config.settings import load_settings
from circus_djmaster.exceptions import SettingsError
from tests.hostile.helpers import call_failed, start_pids
from tests.support.circus_run import (
    REPO_ROOT,
    CircusRun,
    circus_table,
    read,
    start_circus,
)
from tests.support.waiting import wait_until
from tests.support.worker_run import write_settings

TAG = uuid.uuid4().hex[:12]
GOOD_PASSWORD = f"pw-good-{TAG}"
WRONG_PASSWORD = f"pw-wrong-{TAG}"
MALFORMED_PASSWORD = f"pw-malformed-{TAG}"  # followed by "%zz" in its URL
DEADLINE = 30.0

# --------------------------------------------------------- a refusing server


class RefusingServer:
    """Just enough of the PostgreSQL protocol to ask for a password and refuse it."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.passwords: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with contextlib.suppress(OSError, ConnectionError), conn:
                conn.settimeout(5)
                self._refuse(conn)

    def _refuse(self, conn: socket.socket) -> None:
        while True:  # SSLRequest and GSSENCRequest come before the startup message
            body = _message(conn, with_kind=False)
            if int.from_bytes(body[:4], "big") not in (80877103, 80877104):
                break
            conn.sendall(b"N")
        conn.sendall(b"R" + (8).to_bytes(4, "big") + (3).to_bytes(4, "big"))  # cleartext
        self.passwords.append(_message(conn, with_kind=True).rstrip(b"\0"))
        fields = b'SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed for user "djm"\0\0'
        conn.sendall(b"E" + (len(fields) + 4).to_bytes(4, "big") + fields)


def _message(conn: socket.socket, *, with_kind: bool) -> bytes:
    if with_kind:
        _exactly(conn, 1)
    length = int.from_bytes(_exactly(conn, 4), "big")
    return _exactly(conn, length - 4)


def _exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


# ------------------------------------------------------------------ the run


@dataclass
class Secure:
    run: CircusRun
    folder: Path
    conn: psycopg.Connection[Any]
    server: RefusingServer
    urls: dict[str, str]


@pytest.fixture(scope="module")
def secure(
    tmp_path_factory: pytest.TempPathFactory,
    module_database_url: str,
    module_conn: psycopg.Connection[Any],
) -> Iterator[Secure]:
    folder = tmp_path_factory.mktemp("security")
    server = RefusingServer()
    urls = {
        "DJM_PRIMARY_URL": psycopg.conninfo.make_conninfo(
            module_database_url, password=GOOD_PASSWORD
        ),
        "DJM_SECONDARY_URL": (
            f"postgresql://djm:{WRONG_PASSWORD}@127.0.0.1:{server.port}/jobs?sslmode=disable"
        ),
        "DJM_BROKEN_URL": f"postgresql://djm:{MALFORMED_PASSWORD}%zz@127.0.0.1:{server.port}/jobs",
    }
    settings = write_settings(
        folder,
        monitor_interval=1.0,
        polling_interval=30.0,
        log_file=str(folder / "djmaster.log"),
        pid_file=str(folder / "master.pid"),
        log_level="debug",
        databases={
            "primary": "${DJM_PRIMARY_URL}",
            "secondary": "${DJM_SECONDARY_URL}",
            "broken": "${DJM_BROKEN_URL}",
        },
        tables={"circus": circus_table(folder, check_delay=0.5)},
        workers=[{"queues": ["q1"], "max_processes": 1, "sleep_delay": 0.2}],
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT)
    env["DJMASTER_DATABASE_URL"] = module_database_url  # where the job functions record
    env.update(urls)
    run = start_circus(settings, env)
    try:
        run.wait_for_master()
        yield Secure(run, folder, module_conn, server, urls)
    finally:
        run.close()
        server.close()


@pytest.fixture
def env(secure: Secure, request: pytest.FixtureRequest) -> Iterator[Secure]:
    yield secure
    if call_failed(request):
        print(secure.run.logs()[-20000:])


def leaks(text: str, *secrets: str) -> list[str]:
    return [secret for secret in secrets if secret in text]


def all_command_lines() -> dict[int, str]:
    lines = {}
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            lines[process.pid] = " ".join(process.cmdline())
    return lines


# ---------------------------------------------------------------- passwords


def test_no_password_in_any_command_line_or_process_title(env: Secure) -> None:
    """While a worker runs a job: every process's command line (psutil, and ``ps -eo
    args``) is free of the three passwords, and the titles are the documented ones."""
    enqueue_sql = "INSERT INTO delayed_jobs (handler, queue) VALUES (%s, 'q1')"
    handler = '{"callable": "tests.support.jobs:sleep_then_record", "args": ["ps", 3]}'
    env.conn.execute(enqueue_sql, (handler,))
    worker = wait_until(lambda: start_pids(env.conn, "ps"), DEADLINE, "the job to start")[0]
    secrets = (GOOD_PASSWORD, WRONG_PASSWORD, MALFORMED_PASSWORD)
    lines = all_command_lines()
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert "delayed_job: worker[0] (q1) @primary #1 [BUSY]" in lines[worker]  # #1: its wid
    master = env.run.plugin_pid()
    assert master is not None
    assert lines[master].startswith(f"djmaster: master ({env.run.settings.path})")
    assert "delayed_job: worker[0] (q1) @primary" in ps and "djmaster: master (" in ps
    assert not leaks(ps, *secrets)
    for pid, line in lines.items():
        assert not leaks(line, *secrets), f"pid {pid}: {line}"


def test_no_password_in_the_rendered_ini_or_the_files_init_writes(
    env: Secure, tmp_path: Path
) -> None:
    secrets = (GOOD_PASSWORD, WRONG_PASSWORD, MALFORMED_PASSWORD)
    assert not leaks(read(env.run.ini), *secrets)
    assert "${DJM_PRIMARY_URL}" not in read(env.run.ini), "databases appear by name only"
    init_env = dict(os.environ, DJMASTER_DATABASE_URL=env.urls["DJM_PRIMARY_URL"])
    result = subprocess.run(
        [sys.executable, "-m", "circus_djmaster.cli.config", "init", str(tmp_path / "app")],
        capture_output=True,
        text=True,
        env=init_env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    written = sorted(path for path in (tmp_path / "app").rglob("*") if path.is_file())
    assert {path.name for path in written} >= {"djmaster.toml", "circus.ini"}
    for path in written:
        assert not leaks(read(path), *secrets), path
    assert not leaks(result.stdout + result.stderr, *secrets)


def test_no_password_in_any_log_after_an_outage_with_a_wrong_password(env: Secure) -> None:
    """The secondary database refuses the password again and again: the master logs
    each retry with the reason, and no log file (master and workers, circusd) or other
    file of the run holds a password. A job of the primary database runs meanwhile."""
    log = env.run.log_file
    env.conn.execute(
        "INSERT INTO delayed_jobs (handler, queue) VALUES (%s, 'q1')",
        ('{"callable": "tests.support.jobs:record", "args": ["outage"]}',),
    )
    wait_until(
        lambda: read(log).count("database secondary:") >= 3, DEADLINE, "retries of secondary"
    )
    wait_until(lambda: "outage" in _done_keys(env.conn), DEADLINE, "the primary's job")
    assert env.server.passwords and env.server.passwords[0] == WRONG_PASSWORD.encode()
    assert "password authentication failed" in read(log)
    assert "worker started" in read(log), "the worker's log lines are in this file too"
    for path in sorted(p for p in env.folder.rglob("*") if p.is_file()):
        assert not leaks(read(path), GOOD_PASSWORD, WRONG_PASSWORD), path


def test_a_malformed_database_url_never_shows_its_password(env: Secure, tmp_path: Path) -> None:
    """libpq quotes the offending part of a URL it cannot parse ("invalid
    percent-encoded token: \"<password>…\""). The master's retry lines, a worker's log
    and the CLI's errors must not pass that text on."""
    log = env.run.log_file
    wait_until(lambda: "database broken:" in read(log), DEADLINE, "a retry line for broken")

    # A worker on that database, and `djmaster migrate`.
    worker_log = tmp_path / "worker.log"
    settings = write_settings(
        tmp_path,
        log_file=str(worker_log),
        databases={"primary": "${DJM_BROKEN_URL}"},
        workers=[{"queues": ["q1"], "sleep_delay": 0.2}],
    )
    env_vars = dict(env.run.env)
    worker = subprocess.Popen(
        [
            *(sys.executable, "-m", "circus_djmaster", "worker", "--settings", str(settings)),
            *("--group", "worker0", "--database", "primary"),
        ],
        env=env_vars,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(
            lambda: "database primary: " in read(worker_log) or worker.poll() is not None,
            DEADLINE,
            "the worker's first database error",
        )
    finally:
        worker.kill()
        _out, worker_err = worker.communicate(timeout=30)
    migrate = subprocess.run(
        [sys.executable, "-m", "circus_djmaster", "migrate", "--settings", str(settings)],
        capture_output=True,
        text=True,
        env=env_vars,
        timeout=60,
        check=False,
    )
    assert migrate.returncode != 0
    places = {
        "master log": read(log),
        "worker log": read(worker_log) + worker_err,
        "djmaster migrate": migrate.stdout + migrate.stderr,
    }
    leaked = {
        name: next(line for line in text.splitlines() if MALFORMED_PASSWORD in line)
        for name, text in places.items()
        if MALFORMED_PASSWORD in text
    }
    assert not leaked, "\n".join(f"{name}: {line}" for name, line in leaked.items())


def _done_keys(conn: psycopg.Connection[Any]) -> set[str]:
    rows = conn.execute("SELECT job_key FROM job_events WHERE event = 'done'").fetchall()
    return {row[0] for row in rows}


# ----------------------------------------------------------------- endpoints


def _is_loopback_endpoint(endpoint: str) -> bool:
    if endpoint.startswith("ipc://"):
        return True
    host = endpoint.removeprefix("tcp://").rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def test_rendered_configs_have_loopback_endpoints_and_no_multicast(
    env: Secure, tmp_path: Path
) -> None:
    """Read with circus' own loader: the run's circus.ini, the one `djmaster-config
    init` writes, and one rendered from a file without a [circus] table."""
    (tmp_path / "default").mkdir()
    default = tmp_path / "default" / "djmaster.toml"
    default.write_text("[[workers]]\n", encoding="utf-8")
    default_ini = tmp_path / "default" / "circus.ini"
    default_ini.write_text(render_ini(load_settings(default)), encoding="utf-8")
    init_folder = tmp_path / "init"
    subprocess.run(
        [sys.executable, "-m", "circus_djmaster.cli.config", "init", str(init_folder)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    for ini in (env.run.ini, default_ini, init_folder / "circus.ini"):
        config = get_config(str(ini))
        assert config["multicast_endpoint"] == "", ini
        for key in ("endpoint", "pubsub_endpoint"):
            assert _is_loopback_endpoint(config[key]), (ini, key, config[key])
        assert config.get("stats_endpoint") is None or _is_loopback_endpoint(
            config["stats_endpoint"]
        )
        assert config["httpd"] is False and config["statsd"] is False, ini


def test_circusd_and_its_processes_listen_on_loopback_only(env: Secure) -> None:
    """psutil's view of the sockets of circusd and of every process it runs: no TCP
    socket listening and no UDP socket bound outside loopback (circus' multicast
    discovery would open UDP 0.0.0.0:12027)."""
    circusd = psutil.Process(env.run.process.pid)
    processes = [circusd, *circusd.children(recursive=True)]
    listening = []
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            connections = getattr(process, "net_connections", process.connections)
            for conn in connections(kind="inet"):
                bound = conn.type == socket.SOCK_DGRAM or conn.status == psutil.CONN_LISTEN
                if bound and conn.laddr:
                    listening.append((process.pid, conn.type, conn.laddr.ip, conn.laddr.port))
    ports = {port for pid, _t, _ip, port in listening if pid == circusd.pid}
    for endpoint in (env.run.settings.circus.endpoint, env.run.settings.circus.pubsub_endpoint):
        assert int(endpoint.rsplit(":", 1)[1]) in ports, (endpoint, listening)
    outside = [entry for entry in listening if not ipaddress.ip_address(entry[2]).is_loopback]
    assert not outside, outside


@pytest.mark.parametrize(
    "endpoint",
    ["tcp://0.0.0.0:5555", "tcp://*:5555", "tcp://[::]:5555", "tcp://192.0.2.10:5555"],
)
def test_a_circus_endpoint_outside_loopback_is_refused(tmp_path: Path, endpoint: str) -> None:
    """circusd's control socket has no authentication: anyone who reaches it can add a
    watcher running any command. docs/design.md §7 puts the endpoints on 127.0.0.1; a settings
    file asking for a wider address must be refused (by the loader or by render, which
    check and init use), naming the key."""
    path = tmp_path / "djmaster.toml"
    path.write_text(f'[[workers]]\n[circus]\nendpoint = "{endpoint}"\n', encoding="utf-8")
    with pytest.raises(SettingsError) as caught:
        render_ini(load_settings(path))
    assert f"{path}: circus.endpoint: " in str(caught.value)
