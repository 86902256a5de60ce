"""Bad settings (issue 5, item 6): every option of every section, with invalid values
of every sort (wrong type, out of range, bad unit, unset variable…), each refused with
the file, the key and the reason; and nothing starts on a bad file.

The table is driven by :data:`circus_djmaster.config.settings.OPTIONS`: bad values are listed
per value kind, so a new option of a known kind is covered by itself, and an option of
a new kind fails :func:`test_every_option_has_invalid_values`. Hand-picked cases, cross
checks (hard_max_memory vs max_memory, min vs max priority, equal endpoints, duplicate
names) and unknown keys are in tests/unit/test_settings.py; this is the systematic
complement.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import zmq

from circus_djmaster.circusd.client import SyncCircus
from circus_djmaster.config.options import OPTIONS, Option
from circus_djmaster.config.render import render_ini
from circus_djmaster.config.settings import Settings, load_settings
from circus_djmaster.contracts.exit_codes import WorkerExit
from circus_djmaster.exceptions import CircusError, CircusTimeout, SettingsError
from tests.hostile.helpers import done_keys, insert_job
from tests.support.circus_run import CIRCUSD, CircusRun, circus_env, circus_table, read
from tests.support.waiting import wait_until
from tests.support.worker_run import toml_value, worker_env, write_settings

UNSET = "DJMASTER_HOSTILE_UNSET_VARIABLE"
# A reason of None: the value must be refused (file and key named), whatever the words.
Bad = tuple[str, str | None]  # (TOML literal, a fragment of the reason)

_UNSET_VARIABLE: Bad = (f'"${{{UNSET}}}"', f"environment variable {UNSET} is not set")

BAD_VALUES: dict[str, list[Bad]] = {
    "path": [
        ("42", "expected a string, got integer 42"),
        ("[]", "expected a string, got array"),
        ('""', "must not be empty"),
        _UNSET_VARIABLE,
        # No file name can hold a NUL: refuse it, instead of failing where it is used.
        ('"run/a\\u0000b"', None),
    ],
    "duration > 0": [
        ("0", "0 must be greater than 0"),
        ('"0ms"', "must be greater than 0"),
        ("-1", "-1 is not a duration: it must not be negative"),
        ('"5 sec"', '"5 sec" is not a duration (examples'),
        ('"1y"', '"1y" is not a duration'),
        ('"-5s"', '"-5s" is not a duration'),
        ("true", "true is not a duration: expected a number of seconds"),
        ("[1]", "is not a duration"),
        ("nan", "nan is not a duration: it must be finite"),
        ("inf", "inf is not a duration: it must be finite"),
        _UNSET_VARIABLE,
    ],
    "duration": [
        ("-1", "must not be negative"),
        ('"30 minutes"', '"30 minutes" is not a duration'),
        ("false", "false is not a duration"),
        ("inf", "must be finite"),
        _UNSET_VARIABLE,
    ],
    "one of debug, info, warning, error": [
        ('"trace"', '"trace" is not one of debug, info, warning, error'),
        ("3", "expected a string, got integer 3"),
        ('""', "must not be empty"),
    ],
    "one of exec, fork": [
        ('"spawn"', '"spawn" is not one of exec, fork'),
        ('"forkserver"', '"forkserver" is not one of exec, fork'),
        ("true", "expected a string, got boolean true"),
        ('""', "must not be empty"),
        _UNSET_VARIABLE,
    ],
    'integer ≥ 1 or "auto"': [
        ("0", '0 is too small (minimum 1); or "auto"'),
        ('"fast"', 'expected an integer, got string "fast"; or "auto"'),
        ("1.5", 'expected an integer, got float 1.5; or "auto"'),
        ("true", 'expected an integer, got boolean true; or "auto"'),
        _UNSET_VARIABLE,
    ],
    "boolean": [
        ('"yes"', 'expected true or false, got string "yes"'),
        ("1", "expected true or false, got integer 1"),
        ("[]", "expected true or false, got array"),
        _UNSET_VARIABLE,
    ],
    "module": [
        ('"my-app"', '"my-app" is not a module name'),
        ('"myapp:jobs"', "is not a module name"),
        ('"a..b"', "is not a module name"),
        ('""', "must not be empty"),
        ("5", "expected a string, got integer 5"),
    ],
    '"module:attr"': [
        ('"myapp.hooks"', '"myapp.hooks" is not "module.path:attr"'),
        ('"myapp:"', 'is not "module.path:attr"'),
        ('"my app:hook"', 'is not "module.path:attr"'),
        ("1", "expected a string, got integer 1"),
    ],
    "URL": [
        ("5432", "expected a string, got integer"),
        ('["postgresql:///jobs"]', "expected a string, got array"),
        ('""', "must not be empty"),
    ],
    "name": [
        ('"my-group"', '"my-group" must match ^[A-Za-z0-9_]+$'),
        ('"grüppe"', "must match ^[A-Za-z0-9_]+$"),
        ('""', "must not be empty"),
        ("7", "expected a string, got integer 7"),
    ],
    "array of strings": [
        ('"mail"', 'expected an array of non-empty strings, got string "mail"'),
        ('["mail", ""]', "expected an array of non-empty strings"),
        ("[1]", "expected an array of non-empty strings, got array [1]"),
        # PostgreSQL text cannot hold NUL: no job can ever be in such a queue, and the
        # worker's title cannot show it (setproctitle: "embedded null character").
        ('["a\\u0000b"]', None),
    ],
    "integer ≥ 1": [
        ("0", "0 is too small (minimum 1)"),
        ("-3", "-3 is too small (minimum 1)"),
        ("1.5", "expected an integer, got float 1.5"),
        ('"two"', 'expected an integer, got string "two"'),
        ("true", "expected an integer, got boolean true"),
        _UNSET_VARIABLE,
    ],
    "integer": [
        ('"high"', 'expected an integer, got string "high"'),
        ("1.5", "expected an integer, got float 1.5"),
        ("true", "expected an integer, got boolean true"),
    ],
    "size": [
        ('"300XB"', '"300XB" is not a size (examples'),
        ('"MB"', '"MB" is not a size'),
        ("-1", "-1 is not a size: it must not be negative"),
        ("1.5", "a number of bytes must be whole"),
        ("true", "true is not a size"),
        _UNSET_VARIABLE,
    ],
    "endpoint": [
        ('"localhost:5555"', '"localhost:5555" is not tcp://HOST:PORT or ipc://PATH'),
        ('"tcp://127.0.0.1"', "is not tcp://HOST:PORT or ipc://PATH"),
        ('"tcp://127.0.0.1:0"', "is not tcp://HOST:PORT or ipc://PATH"),
        ('"tcp://127.0.0.1:70000"', "is not tcp://HOST:PORT or ipc://PATH"),
        ('"tcp://127.0.0.1:5555 x"', "is not tcp://HOST:PORT or ipc://PATH"),
        ("5555", "expected a string, got integer 5555"),
    ],
    "one of text, json": [
        ('"xml"', '"xml" is not one of text, json'),
        ("1", "expected a string, got integer 1"),
        _UNSET_VARIABLE,
    ],
    "integer 1 to 65535": [
        ("0", "0 is too small (minimum 1)"),
        ("65536", "65536 is too large (maximum 65535)"),
        ('"http"', 'expected an integer, got string "http"'),
        _UNSET_VARIABLE,
    ],
    "host": [
        ('"127.0.0.1:9188"', "is not an IP address or a host name"),
        ('"http://localhost"', "is not an IP address or a host name"),
        ('"a b"', "is not an IP address or a host name"),
        ('""', "must not be empty"),
        ("127", "expected a string, got integer 127"),
    ],
    '"-" or path': [
        ("false", "expected a string, got boolean false"),
        ('""', "must not be empty"),
        ('"log/a\\u0000b.log"', None),
    ],
    "array of modules": [
        ('"myapp.schedules"', 'expected an array of module names, got string "myapp.schedules"'),
        ('["my-app"]', '"my-app" is not a module name'),
        ("[1]", "expected a string, got integer 1"),
    ],
    "cron expression": [
        ('"61 * * * *"', '"61 * * * *" is not a cron expression: Bad minute'),
        ('"* * *"', '"* * *" is not a cron expression: Wrong number of fields'),
        ('"0 3 * * mon-"', "is not a cron expression"),
        ("5", "expected a string, got integer 5"),
        ('""', "must not be empty"),
    ],
    "array": [
        ('"1, 2"', 'expected an array, got string "1, 2"'),
        ("[1979-05-27]", "a TOML date cannot be a job argument (JSON)"),
        ("[nan]", "cannot be a job argument"),
    ],
    "table": [
        ("[1]", "expected a table, got array"),
        ("{ when = 07:32:00 }", "a TOML time cannot be a job argument (JSON)"),
    ],
    "string": [
        ("5", "expected a string, got integer 5"),
        ('""', "must not be empty"),
        ('"a\\u0000b"', "contains a control character"),
    ],
    "time zone": [
        ('"Mars/Olympus"', '"Mars/Olympus" is not a time zone (examples: UTC, Europe/Paris)'),
        ('"../etc/passwd"', "is not a time zone"),
        ("1", "expected a string, got integer 1"),
    ],
}


def dotted_key(option: Option) -> str:
    if option.section == "":
        return option.name
    if option.section == "workers":
        return f"workers[0].{option.name}"
    if option.section == "databases":
        return "databases.primary"
    if option.section == "recurring":
        return f"recurring[0].{option.name}"
    return f"{option.section}.{option.name}"


def settings_text(option: Option, literal: str) -> str:
    """A file that is valid but for ``option`` set to ``literal``."""
    line = f"{option.name} = {literal}\n"
    if option.section == "":
        return line + "[[workers]]\n"
    if option.section == "workers":
        return "[[workers]]\n" + line
    if option.section == "databases":
        return f"[databases]\nprimary = {literal}\n[[workers]]\n"
    if option.section == "recurring":
        # A valid entry (with every instead of cron when every is the bad one).
        entry = {"name": '"r"', "callable": '"m:f"'}
        entry |= {"every": '"1m"'} if option.name == "cron" else {"cron": '"* * * * *"'}
        if option.name == "every":
            entry.pop("cron")
        entry[option.name] = literal
        return "[[workers]]\n[[recurring]]\n" + "".join(f"{k} = {v}\n" for k, v in entry.items())
    if option.section == "metrics" and option.name != "port":
        line = "port = 9188\n" + line  # [metrics] needs its port
    return f"[[workers]]\n[{option.section}]\n" + line


CASES = [
    pytest.param(option, literal, reason, id=f"{dotted_key(option)}={literal}")
    for option in OPTIONS
    for literal, reason in BAD_VALUES.get(option.type, [])
]


def test_every_option_has_invalid_values() -> None:
    missing = [f"{dotted_key(o)} ({o.type})" for o in OPTIONS if o.type not in BAD_VALUES]
    assert not missing, f"add bad values for these kinds of option: {missing}"
    for option in OPTIONS:
        assert any(case.values[0] is option for case in CASES)


@pytest.mark.parametrize(("option", "literal", "reason"), CASES)
def test_an_invalid_value_is_refused_naming_file_key_and_reason(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    option: Option,
    literal: str,
    reason: str | None,
) -> None:
    monkeypatch.delenv(UNSET, raising=False)
    path = tmp_path / "djmaster.toml"
    path.write_text(settings_text(option, literal), encoding="utf-8")
    with pytest.raises(SettingsError) as caught:
        load_settings(path)
    key = dotted_key(option)
    assert [problem.key for problem in caught.value.problems] == [key], str(caught.value)
    (line,) = str(caught.value).splitlines()
    prefix = f"{path}: {key}: "
    assert line.startswith(prefix) and len(line) > len(prefix), line
    if reason is not None:
        assert reason in line[len(prefix) :], line


def test_a_zero_memory_limit_is_refused(tmp_path: Path) -> None:
    """max_memory = 0 retires every worker after every job, and hard_max_memory = 0
    kills every worker at the first monitor tick (charging its job an attempt each
    time, until every job fails). Like durations, sizes must be greater than 0."""
    for key in ("max_memory", "hard_max_memory"):
        path = tmp_path / f"{key}.toml"
        path.write_text(f'[[workers]]\n{key} = "0MB"\n', encoding="utf-8")
        with pytest.raises(SettingsError) as caught:
            load_settings(path)
        assert str(caught.value).startswith(f"{path}: workers[0].{key}: "), str(caught.value)


# ----------------------------------------------------------- nothing started

BROKEN = {  # one bad value per section: every problem is reported at once
    "monitor_interval": ('monitor_interval = "soon"', "monitor_interval"),
    "callbacks": ('[callbacks]\nafter_fork = "nope"', "callbacks.after_fork"),
    "databases": ("[databases]\nprimary = 5", "databases.primary"),
    "workers": ('[[workers]]\nqueues = ["q1"]\nmax_processes = 0', "workers[0].max_processes"),
    "circus": ("[circus]\ncheck_delay = 0", "circus.check_delay"),
}


def broken_file(folder: Path) -> Path:
    path = folder / "djmaster.toml"
    path.write_text("\n".join(text for text, _key in BROKEN.values()) + "\n", encoding="utf-8")
    return path


def run_cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *argv], capture_output=True, text=True, timeout=60, env=env
    )


def test_a_bad_file_starts_nothing_and_writes_nothing(
    tmp_path: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    """check, render and migrate exit 2 (CliExit.USAGE) and write nothing; a worker exits
    78 (WorkerExit.CONFIG_ERROR) without touching the database: the job waiting for them
    stays where it is. Each names the file and every bad key."""
    path = broken_file(tmp_path)
    job = insert_job(conn, "tests.support.jobs:record", "never", queue="q1")
    before = sorted(tmp_path.iterdir())
    output = tmp_path / "out" / "circus.ini"
    env = worker_env(database_url)
    results = {
        "check": run_cli("circus_djmaster.cli.config", "check", str(path), env=env),
        "render": run_cli(
            "circus_djmaster.cli.config", "render", str(path), "-o", str(output), env=env
        ),
        "worker": run_cli(
            *("circus_djmaster", "worker", "--settings", str(path)),
            *("--group", "worker0", "--database", "primary"),
            env=env,
        ),
        "migrate": run_cli("circus_djmaster", "migrate", "--settings", str(path), env=env),
    }
    expected_codes = {"check": 2, "render": 2, "worker": 78, "migrate": 2}
    for command, result in results.items():
        assert result.returncode == expected_codes[command], (command, result.stderr)
        for _text, key in BROKEN.values():
            assert f"{path}: {key}: " in result.stderr, (command, key, result.stderr)
    assert results["render"].stdout == ""
    assert sorted(tmp_path.iterdir()) == before, "a file was written"
    assert not output.exists()
    row = conn.execute("SELECT attempts, locked_by FROM delayed_jobs WHERE id = %s", (job,))
    assert row.fetchone() == (0, None)
    assert not done_keys(conn, ["never"])


def test_a_worker_of_an_unknown_group_or_database_exits_78(
    tmp_path: Path, database_url: str
) -> None:
    """The watcher's command line names a group and a database the (edited) file no
    longer has: exit 78, naming the file and the choices."""
    path = write_settings(tmp_path, workers=[{"name": "mail", "queues": ["q1"]}])
    env = worker_env(database_url)
    for group, database, named in (("gone", "primary", "gone"), ("mail", "gone_db", "gone_db")):
        result = run_cli(
            *("circus_djmaster", "worker", "--settings", str(path)),
            *("--group", group, "--database", database),
            env=env,
        )
        assert result.returncode == WorkerExit.CONFIG_ERROR, result.stderr
        assert str(path) in result.stderr and f'"{named}"' in result.stderr, result.stderr


@pytest.mark.usefixtures("spawn")  # fork: the preloader cannot load the file either
def test_circusd_on_a_good_ini_whose_settings_broke_since_starts_no_worker(
    tmp_path: Path, database_url: str, conn: psycopg.Connection[Any]
) -> None:
    """circus.ini was rendered from a good file; the file was broken before circusd
    started. The master logs the settings error (file, key, reason) into
    <stem>-master.log, starts no worker, and does not crash-loop."""
    settings = write_settings(
        tmp_path,
        monitor_interval=0.5,
        polling_interval=0.5,
        log_file=str(tmp_path / "djmaster.log"),
        tables={"circus": circus_table(tmp_path, check_delay=0.5)},
        workers=[{"queues": ["q1"], "max_processes": 2, "sleep_delay": 0.2}],
    )
    good = load_settings(settings)
    ini = tmp_path / "circus.ini"
    ini.write_text(render_ini(good, python=sys.executable), encoding="utf-8")
    text = settings.read_text(encoding="utf-8")
    settings.write_text(
        text.replace("max_processes = 2", f"max_processes = {toml_value(0)}"), encoding="utf-8"
    )
    insert_job(conn, "tests.support.jobs:record", "never", queue="q1")
    run = _circusd(ini, circus_env({"DJMASTER_DATABASE_URL": database_url}), good)
    master_log = tmp_path / "djmaster-master.log"
    try:
        wait_until(lambda: "cannot load the settings" in read(master_log), 20, "the error line")
        assert f"{settings}: workers[0].max_processes: 0 is too small (minimum 1)" in read(
            master_log
        )
        master = run.plugin_pid()
        assert master is not None
        # Several check_delays and monitor/polling intervals: nothing starts.
        until = time.monotonic() + 3.0
        while time.monotonic() < until:
            assert run.pids("djmaster-worker0-primary") == []
            time.sleep(0.1)
        assert run.status("djmaster-worker0-primary") == "stopped"
        assert run.plugin_pid() == master, "the master crash-loops"
        assert read(master_log).count("cannot load the settings") == 1
        assert not done_keys(conn, ["never"])
        assert not (tmp_path / "djmaster.log").exists() or "worker started" not in read(
            tmp_path / "djmaster.log"
        )
    except BaseException:
        print(read(master_log), "\n--- circusd ---\n", read(run.circus_log))
        raise
    finally:
        run.close()


def _circusd(ini: Path, env: dict[str, str], settings: Settings) -> CircusRun:
    """circusd on an ini as it is (start_circus would render it again from the file)."""
    process = subprocess.Popen(
        [str(CIRCUSD), str(ini)],
        cwd=ini.parent,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    context = zmq.Context()
    client = SyncCircus(settings.circus.endpoint, timeout=2.0, context=context)
    run = CircusRun(process, settings, ini, env, context, client)

    def answers() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"circusd exited with {process.returncode}")
        try:
            client.call("list")
        except (CircusError, CircusTimeout):
            return False
        return True

    try:
        wait_until(answers, 20, "circusd to answer")
    except BaseException:
        run.close()
        raise
    return run
