"""The deployment recipes of docs/deploy/ (docs/deployment.md), exercised as far as this
machine allows: the systemd unit verified by ``systemd-analyze verify``, the compose
file parsed and checked for the keys that matter, the container's command run directly
(no Docker engine here: no image is built), its health check and its stop."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from circus_djmaster.config.kinds import parse_duration
from circus_djmaster.config.render import graceful_timeout
from circus_djmaster.config.settings import Settings, parse_settings
from tests.support.circus_run import free_port
from tests.support.waiting import wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
RECIPES = REPO_ROOT / "docs" / "deploy"
BIN = Path(sys.executable).parent
DEADLINE = 30.0

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 only
    import tomli as tomllib


def recipe_settings() -> Settings:
    """The recipes' djmaster.toml as the container reads it (the URL comes later)."""
    path = RECIPES / "djmaster.toml"
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    return parse_settings(data, path, environ={"DJMASTER_LOG_FILE": "/proc/1/fd/1"})


def longest_graceful_stop(settings: Settings) -> float:
    return float(max(graceful_timeout(group) for group in settings.workers))


def unit_options(text: str) -> dict[str, list[str]]:
    options: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            options.setdefault(key.strip(), []).append(value.strip())
    return options


def test_the_systemd_unit_verifies_and_stops_circusd_as_djmaster_needs(tmp_path: Path) -> None:
    text = (RECIPES / "djmaster.service").read_text(encoding="utf-8")
    options = unit_options(text)
    assert options["KillMode"] == ["mixed"]  # TERM to circusd alone, then SIGKILL the rest
    assert options["KillSignal"] == ["SIGTERM"]
    assert options["ExecReload"] == ["/bin/kill -HUP $MAINPID"]  # never USR1/USR2 to circusd
    assert "USR1" not in "".join(options["ExecReload"] + options["ExecStart"])
    stop = parse_duration(options["TimeoutStopSec"][0])
    settings = recipe_settings()
    assert stop == settings.circus.stop_timeout  # declared, so check warns when outgrown
    assert stop > longest_graceful_stop(settings)
    # The URL comes from a file of its own: no secret in the unit (systemctl show prints it).
    assert options["EnvironmentFile"] and "Environment" not in options
    assert not any("postgresql://" in value for values in options.values() for value in values)
    # systemd-analyze checks the keys and that the commands exist: point them here.
    app = tmp_path / "srv-app"
    (app / "deploy").mkdir(parents=True)
    local = text.replace("/srv/app/.venv/bin/", f"{BIN}/").replace("/srv/app", str(app))
    local = local.replace("EnvironmentFile=/etc/djmaster/environment", "EnvironmentFile=-/dev/null")
    unit = tmp_path / "djmaster.service"
    unit.write_text(local, encoding="utf-8")
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze is needed to verify the unit"
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "djmaster.service" not in result.stdout + result.stderr, result.stderr


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((RECIPES / "compose.yaml").read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def test_the_compose_file_stops_gracefully_logs_to_stdout_and_reads_the_url() -> None:
    services = compose()["services"]
    jobs, migrate = services["jobs"], services["migrate"]
    settings = recipe_settings()
    grace = parse_duration(jobs["stop_grace_period"])
    assert grace == settings.circus.stop_timeout
    assert grace > longest_graceful_stop(settings)
    assert jobs["stop_signal"] == "SIGTERM" and jobs["init"] is True
    for service in (jobs, migrate):
        url = service["environment"]["DJMASTER_DATABASE_URL"]
        assert url.startswith("${DJMASTER_DATABASE_URL"), url  # from the environment
    health = jobs["healthcheck"]["test"]
    assert health[0] == "CMD-SHELL" and "djmaster status --check" in health[1]
    assert migrate["command"][:2] == ["djmaster", "migrate"]
    assert jobs["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert "volumes" not in jobs  # logs go to the container's output, not to a volume
    assert settings.log_file == Path("/proc/1/fd/1")
    assert settings.circus.logoutput == "-"


def dockerfile() -> dict[str, list[str]]:
    instructions: dict[str, list[str]] = {}
    for line in (RECIPES / "Dockerfile").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            instructions.setdefault(word, []).append(rest)
    return instructions


def test_the_dockerfile_runs_as_a_user_and_keeps_the_url_out() -> None:
    instructions = dockerfile()
    assert instructions["USER"] == ["app"]
    assert instructions["STOPSIGNAL"] == ["SIGTERM"]
    assert "DJMASTER_DATABASE_URL" not in "".join(instructions.get("ENV", []))
    command = json.loads(instructions["CMD"][0])
    assert command[:2] == ["sh", "-c"] and "exec circusd" in command[2]


JOBS_MODULE = """\
from pathlib import Path


def hello(marker: str) -> None:
    print("hello from a job")  # a job's own output: circus sends it to log_file too
    Path(marker).write_text("done")
"""


@pytest.fixture
def app_folder(tmp_path: Path) -> Iterator[Path]:
    """The image's /app: the application (myapp) and deploy/djmaster.toml as the recipe
    writes it, but for circusd's sockets: on free ports, since this machine is shared
    (in a container, the defaults are the container's own)."""
    app = tmp_path / "app"
    (app / "myapp").mkdir(parents=True)
    (app / "myapp" / "__init__.py").write_text("")
    (app / "myapp" / "jobs.py").write_text(JOBS_MODULE)
    (app / "deploy").mkdir()
    text = (RECIPES / "djmaster.toml").read_text(encoding="utf-8")
    ports = [free_port() for _ in range(3)]
    sockets = "".join(
        f'{name} = "tcp://127.0.0.1:{port}"\n'
        for name, port in zip(("endpoint", "pubsub_endpoint", "stats_endpoint"), ports, strict=True)
    )
    assert text.count("\n[circus]\n") == 1
    (app / "deploy" / "djmaster.toml").write_text(
        text.replace("\n[circus]\n", f"\n[circus]\n{sockets}")
    )
    yield app


class Output:
    """What a process writes to its stdout, read on a thread."""

    def __init__(self, stream: Any) -> None:
        self.text = ""
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.text += line

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text.splitlines() if line.startswith("{")]


def test_the_containers_command_runs_jobs_logs_to_stdout_is_healthy_and_stops_on_term(
    app_folder: Path, database_url: str
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DJMASTER_SETTINGS")}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", DJMASTER_DATABASE_URL=database_url)
    migrate = compose()["services"]["migrate"]["command"]
    done = subprocess.run(
        migrate, cwd=app_folder, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    command = json.loads(dockerfile()["CMD"][0])
    # In the container the first process' stdout is /proc/1/fd/1; here it is this
    # process' pipe, at the pid circusd gets (each `exec` keeps it).
    wrapper = ["sh", "-c", 'DJMASTER_LOG_FILE=/proc/$$/fd/1 exec "$@"', "sh", *command]
    container = subprocess.Popen(
        wrapper,
        cwd=app_folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output = Output(container.stdout)
    try:
        marker = app_folder / "marker"
        enqueue = subprocess.run(
            ["djmaster", "enqueue", "myapp.jobs:hello", "--args", json.dumps([str(marker)])],
            cwd=app_folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert enqueue.returncode == 0, enqueue.stderr
        wait_until(marker.exists, DEADLINE, "the job to run")

        def logged() -> bool:
            lines = output.json_lines()
            return any(line.get("event") == "job_succeeded" for line in lines) and any(
                line.get("role") == "master" and "master started" in line["message"]
                for line in lines
            )

        wait_until(logged, DEADLINE, "master and worker JSON lines on the container's stdout")
        assert "hello from a job" in output.text  # the job's own print
        assert re.search(r"circus\[\d+\] \[INFO\]", output.text)  # circusd's own lines
        assert database_url not in output.text
        health = compose()["services"]["jobs"]["healthcheck"]["test"][1]
        check = subprocess.run(
            ["sh", "-c", health],
            cwd=app_folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        container.send_signal(signal.SIGTERM)  # docker stop
        grace = parse_duration(compose()["services"]["jobs"]["stop_grace_period"])
        assert container.wait(timeout=grace) == 0
    finally:
        if container.poll() is None:
            os.killpg(container.pid, signal.SIGKILL)
            container.wait()
        print(output.text[-5000:])
