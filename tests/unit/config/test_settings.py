"""Loading and validating the settings file (no database needed)."""

from __future__ import annotations

import dataclasses
import pickle
import sys
import textwrap
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 only
    import tomli as tomllib

from circus_djmaster.config.options import OPTIONS, SECTIONS, options_in
from circus_djmaster.config.settings import (
    LOCK_MARGIN,
    CircusSettings,
    Database,
    MetricsSettings,
    Settings,
    WorkerGroup,
    load_settings,
    parse_settings,
)
from circus_djmaster.exceptions import Problem, SettingsError

SECRET_URL = "postgresql://djmaster:s3cret-pw@db.example:5432/jobs"

FULL = """\
working_directory = "app"
monitor_interval = "10s"
polling_interval = 60
pid_file = "run/djmaster.pid"
log_file = "/var/log/djmaster.log"
log_level = "debug"
listen = false
app = "myapp.jobs"

[callbacks]
before_fork = "myapp.hooks:before_fork"
after_fork = "myapp.hooks:after_fork"
around_work = "myapp.hooks:Hooks.around_work"

[databases]
primary = "${PRIMARY_URL}"
secondary = "postgresql://localhost/other"

[[workers]]
name = "mail"
queues = ["mail", "newsletter"]
max_processes = 4
max_threads = 2
max_memory = "300MB"
hard_max_memory = "1GB"
max_execution = "1h"
idle_timeout = "30s"
sleep_delay = "500ms"
read_ahead = 5
max_attempts = 3
max_run_time = "10m"
min_priority = -5
max_priority = 10
destroy_failed_jobs = true

[[workers]]

[circus]
endpoint = "tcp://127.0.0.1:6555"
pubsub_endpoint = "ipc:///tmp/circus-pubsub.sock"
stats_endpoint = "tcp://127.0.0.1:6557"
check_delay = 2
logoutput = "log/circus.log"
"""


def write(tmp_path: Path, text: str, name: str = "djmaster.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_error(tmp_path: Path, text: str) -> SettingsError:
    path = write(tmp_path, text)
    with pytest.raises(SettingsError) as caught:
        load_settings(path)
    assert caught.value.path == path
    return caught.value


# ------------------------------------------------------------------ valid files


def test_full_file_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PRIMARY_URL", raising=False)  # lazy: not needed to load
    path = write(tmp_path, FULL)
    settings = load_settings(path)

    assert settings.path == path
    assert settings.working_directory == tmp_path / "app"
    assert settings.monitor_interval == 10.0
    assert settings.polling_interval == 60.0
    assert settings.pid_file == tmp_path / "run" / "djmaster.pid"
    assert settings.log_file == Path("/var/log/djmaster.log")
    assert settings.log_level == "debug"
    assert settings.listen is False
    assert settings.app == "myapp.jobs"
    assert dict(settings.callbacks) == {
        "before_fork": "myapp.hooks:before_fork",
        "after_fork": "myapp.hooks:after_fork",
        "around_work": "myapp.hooks:Hooks.around_work",
    }
    assert settings.databases == (
        Database("primary", "${PRIMARY_URL}"),
        Database("secondary", "postgresql://localhost/other"),
    )
    mail, second = settings.workers
    assert mail == WorkerGroup(
        index=0,
        name="mail",
        queues=("mail", "newsletter"),
        max_processes=4,
        max_threads=2,
        max_memory=300 * 1024**2,
        hard_max_memory=1024**3,
        max_execution=3600.0,
        idle_timeout=30.0,
        sleep_delay=0.5,
        read_ahead=5,
        max_attempts=3,
        max_run_time=600.0,
        min_priority=-5,
        max_priority=10,
        destroy_failed_jobs=True,
    )
    assert second.index == 1
    assert second.name == "worker1"
    assert settings.circus == CircusSettings(
        endpoint="tcp://127.0.0.1:6555",
        pubsub_endpoint="ipc:///tmp/circus-pubsub.sock",
        stats_endpoint="tcp://127.0.0.1:6557",
        check_delay=2.0,
        logoutput=str(tmp_path / "log" / "circus.log"),
        stop_timeout=None,
    )
    assert settings.group("mail") is mail
    assert settings.database("secondary").url() == "postgresql://localhost/other"
    # the default group's max_run_time wins, plus the margin
    assert settings.lock_timeout == 4 * 3600.0 + LOCK_MARGIN


def test_defaults(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "[[workers]]\n"))
    assert settings.working_directory == tmp_path
    assert settings.monitor_interval == 5.0
    assert settings.polling_interval == 30.0
    assert settings.pid_file is None
    assert settings.log_file is None
    assert settings.log_level == "info"
    assert settings.listen is True
    assert settings.app is None
    assert dict(settings.callbacks) == {}
    assert settings.databases == (Database("primary", "${DJMASTER_DATABASE_URL}"),)
    (group,) = settings.workers
    assert group == WorkerGroup(
        index=0,
        name="worker0",
        queues=(),
        max_processes=1,
        max_threads=1,
        max_memory=None,
        hard_max_memory=None,
        max_execution=None,
        idle_timeout=0.0,
        sleep_delay=5.0,
        read_ahead=None,
        max_attempts=25,
        max_run_time=4 * 3600.0,
        min_priority=None,
        max_priority=None,
        destroy_failed_jobs=False,
    )
    assert settings.circus == CircusSettings(
        endpoint="tcp://127.0.0.1:5555",
        pubsub_endpoint="tcp://127.0.0.1:5556",
        stats_endpoint="tcp://127.0.0.1:5557",
        check_delay=5.0,
        logoutput="-",
        stop_timeout=None,
    )
    assert settings.lock_timeout == 4 * 3600.0 + LOCK_MARGIN


def test_group_names_default_by_position(tmp_path: Path) -> None:
    text = '[[workers]]\n[[workers]]\nname = "fast"\n[[workers]]\n'
    settings = load_settings(write(tmp_path, text))
    assert [group.name for group in settings.workers] == ["worker0", "fast", "worker2"]
    assert [group.index for group in settings.workers] == [0, 1, 2]


def test_lock_timeout_is_the_longest_max_run_time_plus_the_margin(tmp_path: Path) -> None:
    text = '[[workers]]\nmax_run_time = "10m"\n[[workers]]\nmax_run_time = "2h"\n'
    assert load_settings(write(tmp_path, text)).lock_timeout == 7200.0 + LOCK_MARGIN


def test_relative_paths_resolve_against_the_files_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "conf").mkdir()
    path = write(
        tmp_path / "conf",
        """\
        working_directory = ".."
        pid_file = "../run/x.pid"
        log_file = "x.log"
        [[workers]]
        [circus]
        logoutput = "-"
        """,
    )
    monkeypatch.chdir(tmp_path / "conf")
    settings = load_settings("djmaster.toml")  # a relative path to the file itself too
    assert settings.path == path
    assert settings.working_directory == tmp_path
    assert settings.pid_file == tmp_path / "run" / "x.pid"
    assert settings.log_file == tmp_path / "conf" / "x.log"
    assert settings.circus.logoutput == "-"


def test_parse_settings_takes_decoded_data(tmp_path: Path) -> None:
    data = {"workers": [{"queues": ["a"]}], "databases": {"main": "postgresql:///x"}}
    settings = parse_settings(data, tmp_path / "virtual.toml")
    assert settings.path == tmp_path / "virtual.toml"
    assert settings.workers[0].queues == ("a",)
    assert settings.database("main").url() == "postgresql:///x"


def test_results_are_frozen(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, '[[workers]]\n[callbacks]\nafter_fork = "a:b"\n'))
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.listen = False  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.workers[0].max_processes = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        settings.callbacks["before_fork"] = "a:b"  # type: ignore[index]


# ---------------------------------------------------------- environment variables


def test_env_variables_expand_at_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DJ_APP", "myapp.jobs")
    monkeypatch.setenv("DJ_QUEUE", "mail")
    monkeypatch.setenv("DJ_PROCESSES", "3")
    monkeypatch.setenv("DJ_EMPTY", "")
    monkeypatch.delenv("DJ_UNSET", raising=False)
    settings = load_settings(
        write(
            tmp_path,
            """\
            app = "${DJ_APP}"
            log_file = "${DJ_UNSET:-log}/${DJ_EMPTY:-x}.log"
            listen = "${DJ_UNSET:-false}"
            [[workers]]
            queues = ["${DJ_QUEUE}", "${DJ_QUEUE}_slow"]
            max_processes = "${DJ_PROCESSES}"
            max_run_time = "${DJ_UNSET:-1h}"
            """,
        )
    )
    assert settings.app == "myapp.jobs"
    assert settings.log_file == tmp_path / "log" / "x.log"
    assert settings.listen is False
    group = settings.workers[0]
    assert group.queues == ("mail", "mail_slow")
    assert group.max_processes == 3
    assert group.max_run_time == 3600.0


def test_unset_env_variable_is_an_error_naming_key_and_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DJ_UNSET", raising=False)
    monkeypatch.delenv("DJ_OTHER", raising=False)
    error = load_error(
        tmp_path,
        """\
        app = "${DJ_UNSET}"
        [[workers]]
        queues = ["${DJ_UNSET}${DJ_OTHER}"]
        """,
    )
    path = tmp_path / "djmaster.toml"
    assert str(error).splitlines() == [
        f"{path}: app: environment variable DJ_UNSET is not set",
        f"{path}: workers[0].queues: environment variables DJ_UNSET, DJ_OTHER are not set",
    ]


def test_database_urls_expand_lazily(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DJMASTER_DATABASE_URL", raising=False)
    path = write(tmp_path, "[[workers]]\n")
    database = load_settings(path).database("primary")  # loads without the secret
    with pytest.raises(SettingsError) as caught:
        database.url()
    assert str(caught.value) == (
        f"{path}: databases.primary: environment variable DJMASTER_DATABASE_URL is not set"
    )
    assert caught.value.problems == [
        Problem("databases.primary", "environment variable DJMASTER_DATABASE_URL is not set")
    ]
    monkeypatch.setenv("DJMASTER_DATABASE_URL", SECRET_URL)
    assert database.url() == SECRET_URL
    assert database.url({"DJMASTER_DATABASE_URL": "postgresql:///x"}) == "postgresql:///x"
    monkeypatch.setenv("DJMASTER_DATABASE_URL", "")
    with pytest.raises(SettingsError, match=r"databases\.primary: the URL is empty"):
        database.url()


def test_database_url_never_shows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DJ_URL", SECRET_URL)
    settings = load_settings(
        write(
            tmp_path, f'[databases]\nliteral = "{SECRET_URL}"\nenv = "${{DJ_URL}}"\n[[workers]]\n'
        )
    )
    for database in settings.databases:
        assert "s3cret" not in repr(database)
        assert "s3cret" not in str(database)
        assert database.url() == SECRET_URL
    assert "s3cret" not in repr(settings)
    assert repr(settings.database("literal")) == "Database(name='literal', url_template=<hidden>)"


def test_bad_database_url_error_does_not_echo_it(tmp_path: Path) -> None:
    error = load_error(tmp_path, "[databases]\nprimary = 5432\n[[workers]]\n")
    assert (
        str(error)
        == f"{tmp_path / 'djmaster.toml'}: databases.primary: expected a string, got integer"
    )
    assert "5432" not in str(error)


def test_metrics_table_turns_the_endpoint_on(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, "[[workers]]\n")).metrics is None
    settings = load_settings(write(tmp_path, "[[workers]]\n[metrics]\nport = 9188\n"))
    assert settings.metrics == MetricsSettings(port=9188, host="127.0.0.1")
    text = '[[workers]]\n[metrics]\nport = "9189"\nhost = "::1"\n'
    assert load_settings(write(tmp_path, text)).metrics == MetricsSettings(9189, "::1")


def test_log_format_and_stop_timeout(tmp_path: Path) -> None:
    text = 'log_format = "JSON"\n[[workers]]\n[circus]\nstop_timeout = "1m30s"\n'
    settings = load_settings(write(tmp_path, text))
    assert (settings.log_format, settings.circus.stop_timeout) == ("json", 90.0)
    defaults = load_settings(write(tmp_path, "[[workers]]\n"))
    assert (defaults.log_format, defaults.circus.stop_timeout) == ("text", None)


# ------------------------------------------------------------------ bad input

W = "[[workers]]\n"
C = "[[workers]]\n[circus]\n"

# (file text, dotted key, reason fragment)
BAD = [
    (f'monitor_interval = "5 sec"\n{W}', "monitor_interval", '"5 sec" is not a duration'),
    (f"polling_interval = 0\n{W}", "polling_interval", "0 must be greater than 0"),
    (f"pid_file = 42\n{W}", "pid_file", "expected a string, got integer 42"),
    (f'log_file = ""\n{W}', "log_file", "must not be empty"),
    (f'log_level = "trace"\n{W}', "log_level", '"trace" is not one of debug, info, warning'),
    (f'listen = "yes"\n{W}', "listen", 'expected true or false, got string "yes"'),
    (f'app = "my-app"\n{W}', "app", '"my-app" is not a module name'),
    (f'{W}[callbacks]\nafter_fork = "myapp.x"\n', "callbacks.after_fork", "module.path:attr"),
    (f"{W}[callbacks]\nbefore_work = 1\n", "callbacks.before_work", "expected a string"),
    (f'{W}name = ""\n', "workers[0].name", "must not be empty"),
    (f'{W}queues = "mail"\n', "workers[0].queues", "expected an array of non-empty"),
    (f'{W}queues = ["mail", ""]\n', "workers[0].queues", "array of non-empty strings"),
    (f"{W}max_processes = 0\n", "workers[0].max_processes", "0 is too small (minimum 1)"),
    (f"{W}max_threads = 1.5\n", "workers[0].max_threads", "expected an integer, got float"),
    (f'{W}max_memory = "300XB"\n', "workers[0].max_memory", '"300XB" is not a size (examples'),
    (f"{W}hard_max_memory = -1\n", "workers[0].hard_max_memory", "must not be negative"),
    (f'{W}max_execution = "1y"\n', "workers[0].max_execution", '"1y" is not a duration'),
    (f"{W}idle_timeout = -1\n", "workers[0].idle_timeout", "must not be negative"),
    (f"{W}sleep_delay = 0\n", "workers[0].sleep_delay", "must be greater than 0"),
    (f"{W}read_ahead = 0\n", "workers[0].read_ahead", 'too small (minimum 1); or "auto"'),
    (f'{W}read_ahead = "fast"\n', "workers[0].read_ahead", "expected an integer"),
    (f"{W}max_attempts = true\n", "workers[0].max_attempts", "got boolean true"),
    (f'{W}max_run_time = "0s"\n', "workers[0].max_run_time", "must be greater than 0"),
    (f'{W}min_priority = "high"\n', "workers[0].min_priority", "expected an integer"),
    (f"{W}destroy_failed_jobs = 1\n", "workers[0].destroy_failed_jobs", "expected true or"),
    (f'{C}endpoint = "localhost:1"\n', "circus.endpoint", "is not tcp://HOST:PORT or ipc://"),
    (f"{C}check_delay = [1]\n", "circus.check_delay", "is not a duration"),
    (f"{C}logoutput = false\n", "circus.logoutput", "expected a string"),
    ("workers = 3\n", "workers", "expected an array of tables ([[workers]]), got integer"),
    ("workers = [1]\n", "workers[0]", "expected a table, got integer"),
    ("[workers]\nname = 'x'\n", "workers", "expected an array of tables"),
    ("", "workers", "at least one [[workers]] table is required"),
    ("workers = []\n", "workers", "at least one [[workers]] table is required"),
    (f"databases = {{}}\n{W}", "databases", "at least one database is required"),
    (f'databases = "x"\n{W}', "databases", "expected a table ([databases]), got string"),
    (f"callbacks = []\n{W}", "callbacks", "expected a table ([callbacks]), got array"),
    (f"circus = 1\n{W}", "circus", "expected a table ([circus]), got integer"),
    (f'log_format = "xml"\n{W}', "log_format", '"xml" is not one of text, json'),
    (f'{C}stop_timeout = "soon"\n', "circus.stop_timeout", '"soon" is not a duration'),
    (f"{W}[metrics]\n", "metrics.port", "required when [metrics] is present"),
    (f"{W}[metrics]\nport = 0\n", "metrics.port", "0 is too small (minimum 1)"),
    (f"{W}[metrics]\nport = 70000\n", "metrics.port", "70000 is too large (maximum 65535)"),
    (f'{W}[metrics]\nport = 9188\nhost = "a b"\n', "metrics.host", "is not an IP address"),
    (f"{W}[metrics]\nport = 9188\npath = 1\n", "metrics.path", "unknown key"),
    (f"metrics = 1\n{W}", "metrics", "expected a table ([metrics]), got integer"),
]


@pytest.mark.parametrize(("text", "key", "reason"), BAD)
def test_bad_values_name_file_key_and_reason(
    tmp_path: Path, text: str, key: str, reason: str
) -> None:
    error = load_error(tmp_path, text)
    lines = str(error).splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{tmp_path / 'djmaster.toml'}: {key}: ")
    assert reason in lines[0]
    assert [problem.key for problem in error.problems] == [key]


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    error = load_error(
        tmp_path,
        """\
        monitor_interval = "soon"
        log_level = "loud"
        [[workers]]
        max_memory = "300XB"
        max_processes = 0
        [[workers]]
        max_run_time = -1
        [circus]
        endpoint = "nowhere"
        """,
    )
    assert [problem.key for problem in error.problems] == [
        "monitor_interval",
        "log_level",
        "workers[0].max_processes",
        "workers[0].max_memory",
        "workers[1].max_run_time",
        "circus.endpoint",
    ]
    lines = str(error).splitlines()
    assert len(lines) == 6
    assert all(line.startswith(f"{tmp_path / 'djmaster.toml'}: ") for line in lines)


def test_unknown_keys_suggest_close_matches(tmp_path: Path) -> None:
    error = load_error(
        tmp_path,
        """\
        pid_fle = "x.pid"
        colour = "blue"
        [worker]
        [callbacks]
        befor_fork = "a:b"
        [[workers]]
        max_memroy = "1GB"
        [circus]
        endpont = "tcp://127.0.0.1:1"
        """,
    )
    assert [(problem.key, problem.reason) for problem in error.problems] == [
        ("pid_fle", 'unknown key (did you mean "pid_file"?)'),
        ("colour", "unknown key"),
        ("worker", 'unknown key (did you mean "workers"?)'),
        ("callbacks.befor_fork", 'unknown key (did you mean "before_fork"?)'),
        ("workers[0].max_memroy", 'unknown key (did you mean "max_memory"?)'),
        ("circus.endpont", 'unknown key (did you mean "endpoint"?)'),
    ]
    assert f"{tmp_path / 'djmaster.toml'}: workers[0].max_memroy: unknown key" in str(error)


def test_duplicate_group_names(tmp_path: Path) -> None:
    error = load_error(
        tmp_path, '[[workers]]\nname = "worker1"\n[[workers]]\n[[workers]]\nname = "worker1"\n'
    )
    assert [(problem.key, problem.reason) for problem in error.problems] == [
        ("workers[1].name", 'duplicate name "worker1" (already used by workers[0])'),
        ("workers[2].name", 'duplicate name "worker1" (already used by workers[0])'),
    ]


@pytest.mark.parametrize("name", ["my-group", "my.group", "my group", "grüppe"])
def test_bad_group_names(tmp_path: Path, name: str) -> None:
    error = load_error(tmp_path, f'[[workers]]\nname = "{name}"\n')
    assert str(error) == (
        f'{tmp_path / "djmaster.toml"}: workers[0].name: "{name}" must match '
        "^[A-Za-z0-9_]+$ (it becomes part of circus watcher names)"
    )


_RULE = "must match ^[A-Za-z0-9_]+$ (it becomes part of circus watcher names)"


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("my-db", f'databases.my-db: database name "my-db" {_RULE}'),
        ("my.db", f'databases."my.db": database name "my.db" {_RULE}'),
        ("", 'databases."": database name must not be empty'),
    ],
)
def test_bad_database_names(tmp_path: Path, name: str, problem: str) -> None:
    error = load_error(tmp_path, f'[databases]\n"{name}" = "postgresql:///x"\n[[workers]]\n')
    assert str(error) == f"{tmp_path / 'djmaster.toml'}: {problem}"


def test_min_priority_above_max_priority(tmp_path: Path) -> None:
    error = load_error(tmp_path, "[[workers]]\nmin_priority = 5\nmax_priority = 1\n")
    assert str(error) == (
        f"{tmp_path / 'djmaster.toml'}: workers[0].min_priority: 5 is greater than max_priority (1)"
    )
    # equal bounds are fine
    load_settings(write(tmp_path, "[[workers]]\nmin_priority = 1\nmax_priority = 1\n"))


@pytest.mark.parametrize("hard", ['"300MB"', '"200MB"'])
def test_hard_max_memory_must_exceed_max_memory(tmp_path: Path, hard: str) -> None:
    error = load_error(tmp_path, f'[[workers]]\nmax_memory = "300MB"\nhard_max_memory = {hard}\n')
    assert str(error) == (
        f"{tmp_path / 'djmaster.toml'}: workers[0].hard_max_memory: "
        "must be greater than max_memory (300MB)"
    )


def test_circus_endpoints_must_differ(tmp_path: Path) -> None:
    error = load_error(tmp_path, '[[workers]]\n[circus]\nstats_endpoint = "tcp://127.0.0.1:5555"\n')
    assert str(error) == (
        f"{tmp_path / 'djmaster.toml'}: circus.stats_endpoint: same as circus.endpoint"
    )


def test_toml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    error = load_error(tmp_path, '[[workers]]\nname = "a"\nmax_memory = \n')
    (line,) = str(error).splitlines()
    assert line.startswith(f"{tmp_path / 'djmaster.toml'}: TOML syntax error at line 3, column ")
    assert error.problems[0].key == ""


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(SettingsError) as caught:
        load_settings(path)
    assert str(caught.value) == f"{path}: no such file"
    assert caught.value.path == path


def test_unreadable_file_names_the_reason(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="Is a directory"):
        load_settings(tmp_path)
    path = tmp_path / "latin1.toml"
    path.write_bytes('app = "caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(SettingsError, match="not UTF-8 text"):
        load_settings(path)


# ------------------------------------------------------------------ lookups, errors


def test_lookups_name_the_choices(tmp_path: Path) -> None:
    path = write(tmp_path, '[databases]\na = "x"\nb = "y"\n[[workers]]\nname = "mail"\n')
    settings = load_settings(path)
    with pytest.raises(SettingsError) as caught:
        settings.group("nope")
    assert str(caught.value) == f'{path}: workers: no worker group named "nope" (choices: mail)'
    with pytest.raises(SettingsError) as caught:
        settings.database("c")
    assert str(caught.value) == f'{path}: databases: no database named "c" (choices: a, b)'


def test_settings_error_shape_and_pickling() -> None:
    error = SettingsError(Path("/x.toml"), [Problem("a", "bad"), Problem("", "worse")])
    assert str(error) == "/x.toml: a: bad\n/x.toml: worse"
    assert str(SettingsError(None, [Problem("a", "bad")])) == "a: bad"
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.path, copy.problems, str(copy)) == (error.path, error.problems, str(error))


# ------------------------------------------------------------------ declarations


def test_declarations_match_the_result_types() -> None:
    """Every option is declared once and lands in exactly one result field."""
    names = [(option.section, option.name) for option in OPTIONS]
    assert len(names) == len(set(names))
    assert {option.section for option in OPTIONS} == {section.name for section in SECTIONS}
    fields = {field.name for field in dataclasses.fields(Settings)}
    sections = {section.name for section in SECTIONS if section.name}
    assert {option.name for option in options_in("")} | sections | {"path"} == fields
    worker_fields = {field.name for field in dataclasses.fields(WorkerGroup)} - {"index"}
    assert {option.name for option in options_in("workers")} == worker_fields
    circus_fields = {field.name for field in dataclasses.fields(CircusSettings)}
    assert {option.name for option in options_in("circus")} == circus_fields
    metrics_fields = {field.name for field in dataclasses.fields(MetricsSettings)}
    assert {option.name for option in options_in("metrics")} == metrics_fields
    assert all(option.doc and option.type for option in OPTIONS)


def test_declared_defaults_read_back(tmp_path: Path) -> None:
    """``default_toml`` (used by docs and ``djmaster-config init``) parses to the default."""
    for option in OPTIONS:
        if option.default_toml is None:
            continue
        value = tomllib.loads(f"x = {option.default_toml}")["x"]
        parsed = option.kind.parse(value, tmp_path)
        assert parsed == option.default, option.name


def test_read_ahead_is_auto_by_default_and_takes_auto_or_a_count(tmp_path: Path) -> None:
    """None stands for "auto" (worker/read_ahead.py); an integer is what it says."""
    base = {"databases": {"primary": "postgresql:///x"}}
    for value, expected in (("auto", None), (" Auto ", None), (7, 7), ("3", 3)):
        data = base | {"workers": [{"read_ahead": value}]}
        assert parse_settings(data, tmp_path / "s.toml").workers[0].read_ahead == expected
