"""`djmaster-config render`: the circus.ini it writes, read back with circus' own loader."""

from __future__ import annotations

import dataclasses
import os
import shlex
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from circus.config import get_config
from circus.plugins import _cfg2str, _str2cfg

from circus_djmaster.circusd.hooks import after_reap, before_spawn
from circus_djmaster.cli import config as config_cli
from circus_djmaster.config.render import GRACE_MARGIN, graceful_timeout, render_ini, watcher_index
from circus_djmaster.config.settings import Settings, load_settings
from circus_djmaster.contracts.watchers import (
    AFTER_REAP_HOOK,
    BEFORE_SPAWN_HOOK,
    PLUGIN_CLASS,
    watcher_name,
)
from circus_djmaster.exceptions import RenderError, SettingsError

REPO_ROOT = Path(__file__).resolve().parents[3]
SECRET_URL = "postgresql://u:s3cretpw@h/db"
LITERAL_URL = "postgresql://lit:l1teralpw@h/reports"

TWO_BY_TWO = f"""
[databases]
primary = "${{DJ_TEST_SECRET_URL}}"
reports = "{LITERAL_URL}"

[[workers]]
name = "mail"
queues = ["mail"]
max_processes = 2
max_run_time = "90.5s"

[[workers]]
name = "default"
max_processes = 4
"""


def write_settings(folder: Path, text: str = TWO_BY_TWO, name: str = "djmaster.toml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DJ_TEST_SECRET_URL", SECRET_URL)


@pytest.fixture
def settings(tmp_path: Path, secret_env: None) -> Settings:
    return load_settings(write_settings(tmp_path / "app"))


def circus_config(tmp_path: Path, text: str) -> dict[str, Any]:
    ini = tmp_path / "circus.ini"
    ini.write_text(text, encoding="utf-8")
    return get_config(str(ini))


# --------------------------------------------------------------- names


def test_watcher_name_is_prefix_group_database() -> None:
    assert watcher_name("mail", "primary") == "djmaster-mail-primary"
    assert watcher_name("Big_Group", "db_2") == "djmaster-Big_Group-db_2"


def test_watcher_index_is_keyed_by_circus_lowercase_names(tmp_path: Path, secret_env: None) -> None:
    text = TWO_BY_TWO.replace('name = "mail"', 'name = "Mail"')
    settings = load_settings(write_settings(tmp_path, text))
    index = watcher_index(settings)
    # circus' `list` and event topics give lower-cased names.
    assert index["djmaster-mail-primary"] == ("Mail", "primary")
    assert len(index) == 4


# ------------------------------------------------------- circus loader


def test_rendered_ini_parses_with_circus_loader(tmp_path: Path, settings: Settings) -> None:
    config = circus_config(tmp_path, render_ini(settings, python=sys.executable))

    assert config["endpoint"] == "tcp://127.0.0.1:5555"
    assert config["pubsub_endpoint"] == "tcp://127.0.0.1:5556"
    assert config["multicast_endpoint"] == ""  # Controller skips UDP when falsy
    assert config["statsd"] is False  # would be forced True by a stats_endpoint line
    assert config["httpd"] is False
    assert config["check_delay"] == 5.0
    assert config["logoutput"] == "-"

    names = [watcher["name"] for watcher in config["watchers"]]
    assert names == sorted(
        f"djmaster-{group}-{database}"
        for group in ("mail", "default")
        for database in ("primary", "reports")
    )
    for watcher in config["watchers"]:
        _prefix, group, database = watcher["name"].split("-")
        assert watcher["cmd"] == sys.executable
        assert shlex.split(watcher["args"]) == [
            "-m",
            "circus_djmaster",
            "worker",
            "--settings",
            str(settings.path),
            "--group",
            group,
            "--database",
            database,
            "--wid",
            "$(circus.wid)",
        ]
        assert watcher["working_dir"] == str(settings.working_directory)
        assert watcher["numprocesses"] == 0
        assert watcher["respawn"] is True
        assert watcher["singleton"] is False
        assert watcher["warmup_delay"] == 0
        assert watcher["priority"] == 0
        assert watcher["stop_signal"] == signal.SIGTERM
        expected_timeout = 91 + GRACE_MARGIN if group == "mail" else 4 * 3600 + GRACE_MARGIN
        assert watcher["graceful_timeout"] == expected_timeout
        assert watcher["copy_env"] is True
        assert watcher["copy_path"] is True
        assert watcher["hooks"] == {
            "after_reap": [AFTER_REAP_HOOK, False],
            "before_spawn": [BEFORE_SPAWN_HOOK, False],
        }
        # No log_file: the workers' output goes to a file of their own, not circusd's.
        workers_log = {
            "class": "WatchedFileStream",
            "filename": str(settings.path.with_name("djmaster-workers.log")),
        }
        assert watcher["stdout_stream"] == workers_log
        assert watcher["stderr_stream"] == workers_log

    (plugin,) = config["plugins"]
    assert plugin["name"] == "plugin:djmaster"
    assert plugin["use"] == PLUGIN_CLASS
    assert plugin["settings"] == str(settings.path)
    assert plugin["copy_env"] == "true"  # plugin options stay strings in circus
    assert float(plugin["graceful_timeout"]) > 0
    assert "priority" not in plugin  # circus' default 1 is above the workers' 0


def test_plugin_options_survive_circus_command_line(settings: Settings) -> None:
    """circus pastes the plugin section into `--config k:v:::k:v` of a command line."""
    config = {
        "name": "plugin:djmaster",
        "settings": str(settings.path),
        "copy_env": "true",
        "graceful_timeout": "10",
    }
    option = _cfg2str(config)
    assert shlex.split(f"python --config {option} x") == ["python", "--config", option, "x"]
    assert _str2cfg(option) == config


def test_circus_builds_the_watchers(tmp_path: Path, secret_env: None) -> None:
    """circusd builds Watcher objects from the ini: the hook resolves, streams open."""
    from circus.watcher import Watcher

    (tmp_path / "log").mkdir()
    text = 'log_file = "log/djmaster.log"\n' + TWO_BY_TWO
    settings = load_settings(write_settings(tmp_path, text))
    config = circus_config(tmp_path, render_ini(settings))
    for watcher_config in config["watchers"]:
        assert watcher_config["stdout_stream"] == {
            "class": "WatchedFileStream",
            "filename": str(tmp_path / "log" / "djmaster.log"),
        }
        assert watcher_config["stderr_stream"] == watcher_config["stdout_stream"]
        watcher = Watcher.load_from_config(dict(watcher_config))
        try:
            assert watcher.hooks["after_reap"] is after_reap
            assert watcher.hooks["before_spawn"] is before_spawn
            assert watcher.respawn is True
            # circus resolves the dotted path circus.ini names to the hook itself.
            assert watcher.hooks["after_reap"] is after_reap
        finally:
            for stream in (watcher.stdout_stream, watcher.stderr_stream):
                stream.close()


def test_rendering_is_deterministic(settings: Settings) -> None:
    assert render_ini(settings) == render_ini(settings)


def test_header_names_the_settings_file(settings: Settings) -> None:
    text = render_ini(settings)
    header = text.split("[circus]")[0]
    assert str(settings.path) in header
    assert "djmaster-config render" in header
    assert "Do not edit" in header


def test_graceful_timeout_rounds_max_run_time_up(settings: Settings) -> None:
    group = dataclasses.replace(settings.workers[0], max_run_time=0.1)
    assert graceful_timeout(group) == 1 + GRACE_MARGIN
    group = dataclasses.replace(settings.workers[0], max_run_time=60.0)
    assert graceful_timeout(group) == 60 + GRACE_MARGIN


# --------------------------------------------------------------- secrets


def test_no_secret_in_rendered_ini(settings: Settings) -> None:
    assert os.environ["DJ_TEST_SECRET_URL"] == SECRET_URL
    text = render_ini(settings)
    for secret in (SECRET_URL, "s3cretpw", LITERAL_URL, "l1teralpw", "DJ_TEST_SECRET_URL"):
        assert secret not in text


def test_renders_without_the_secret_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Rendering happens on build machines too: URLs are not needed, so not expanded.
    monkeypatch.delenv("DJ_TEST_SECRET_URL", raising=False)
    assert "[watcher:djmaster-mail-primary]" in render_ini(load_settings(write_settings(tmp_path)))


# -------------------------------------------------------- unsafe values


@pytest.mark.parametrize("folder", ["with space", "a:::b", "quote'd"])
def test_settings_path_unsafe_for_plugin_command_line(
    tmp_path: Path, secret_env: None, folder: str
) -> None:
    settings = load_settings(write_settings(tmp_path / folder))
    with pytest.raises(SettingsError) as caught:
        render_ini(settings)
    message = str(caught.value)
    assert repr(str(settings.path)) in message
    assert "command line" in message


def test_logoutput_with_space_is_refused(tmp_path: Path, secret_env: None) -> None:
    text = TWO_BY_TWO + '\n[circus]\nlogoutput = "logs dir/circus.log"\n'
    settings = load_settings(write_settings(tmp_path, text))
    with pytest.raises(SettingsError, match=r"circus\.logoutput: .*command line"):
        render_ini(settings)


def test_working_directory_starting_an_ini_comment_is_refused(
    tmp_path: Path, secret_env: None
) -> None:
    text = 'working_directory = "/srv/app ;old"\n' + TWO_BY_TWO
    settings = load_settings(write_settings(tmp_path, text))
    with pytest.raises(SettingsError, match=r"working_directory: .*comment"):
        render_ini(settings)


def test_names_differing_only_by_case_are_refused(tmp_path: Path, secret_env: None) -> None:
    text = TWO_BY_TWO.replace('name = "default"', 'name = "MAIL"')
    settings = load_settings(write_settings(tmp_path, text))
    with pytest.raises(SettingsError, match=r"workers\[1\]\.name: 'MAIL' differs from 'mail'"):
        render_ini(settings)


def test_python_with_space_is_quoted_for_circus(tmp_path: Path, settings: Settings) -> None:
    python = "/opt/my venv/bin/python"
    config = circus_config(tmp_path, render_ini(settings, python=python))
    # circus runs shlex.split(cmd) + shlex.split(args).
    assert shlex.split(config["watchers"][0]["cmd"]) == [python]


@pytest.mark.parametrize("python", ["python3", "/usr/bin/py\nthon", "/a ;b/python"])
def test_bad_python_is_refused(settings: Settings, python: str) -> None:
    with pytest.raises(RenderError):
        render_ini(settings, python=python)


# ------------------------------------------------------------------ CLI


def test_cli_render_to_stdout(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert config_cli.main(["render", str(settings.path)]) == 0
    captured = capsys.readouterr()
    assert captured.out == render_ini(settings)
    assert captured.err == ""


def test_cli_render_to_file(tmp_path: Path, settings: Settings) -> None:
    output = tmp_path / "out" / "circus.ini"
    output.parent.mkdir()
    output.write_text("old\n")
    os.chmod(output, 0o600)
    assert config_cli.main(["render", str(settings.path), "-o", str(output)]) == 0
    assert output.read_text() == render_ini(settings)
    assert stat.S_IMODE(output.stat().st_mode) == 0o644
    assert sorted(p.name for p in output.parent.iterdir()) == ["circus.ini"]  # no temp left
    get_config(str(output))


def test_cli_render_unwritable_output_exits_1(
    tmp_path: Path, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "missing" / "circus.ini"
    assert config_cli.main(["render", str(settings.path), "-o", str(output)]) == 1
    assert "djmaster-config:" in capsys.readouterr().err


def test_cli_bad_settings_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_settings(tmp_path, "bogus_key = 1\n" + TWO_BY_TWO)
    with pytest.raises(SettingsError) as caught:
        load_settings(path)
    assert config_cli.main(["render", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"{caught.value}\n"
    assert f"{path}: bogus_key: " in captured.err


def test_cli_unsafe_path_exit_2(
    tmp_path: Path, secret_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_settings(tmp_path / "with space")
    assert config_cli.main(["render", str(path)]) == 2
    assert repr(str(path)) in capsys.readouterr().err


def test_cli_render_makes_the_folders_circusd_writes_into(
    tmp_path: Path, secret_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """A log_file in a folder that did not exist made circusd drop every worker watcher
    with a mere warning: no job ever ran (issue 14). render now makes it (and those of
    pid_file and circus' logoutput) before circus.ini exists."""
    text = (
        'log_file = "nowhere/djmaster.log"\npid_file = "run/pids/master.pid"\n'
        + TWO_BY_TWO
        + '\n[circus]\nlogoutput = "circus-logs/circusd.log"\n'
    )
    path = write_settings(tmp_path, text)
    assert config_cli.main(["render", str(path), "-o", str(tmp_path / "circus.ini")]) == 0
    for folder in ("nowhere", "run/pids", "circus-logs"):
        assert (tmp_path / folder).is_dir(), folder
    err = capsys.readouterr().err
    assert f"created folder {tmp_path / 'nowhere'} (for log_file)" in err
    assert f"created folder {tmp_path / 'circus-logs'} (for circus.logoutput)" in err
    # circusd can now open every watcher's output file.
    from circus.watcher import Watcher

    for watcher_config in circus_config(tmp_path, (tmp_path / "circus.ini").read_text())[
        "watchers"
    ]:
        watcher = Watcher.load_from_config(dict(watcher_config))
        for stream in (watcher.stdout_stream, watcher.stderr_stream):
            stream.close()


def test_cli_render_refuses_when_a_folder_cannot_be_made(
    tmp_path: Path, secret_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "afile").write_text("not a folder")
    path = write_settings(tmp_path, 'log_file = "afile/log/djmaster.log"\n' + TWO_BY_TWO)
    output = tmp_path / "circus.ini"
    assert config_cli.main(["render", str(path), "-o", str(output)]) == 1
    err = capsys.readouterr().err
    assert f"{path}: log_file: cannot create folder {tmp_path / 'afile' / 'log'}: " in err
    assert not output.exists()  # nothing circusd would run without its workers


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "circus_djmaster.cli.config", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_cli_subprocess_render_and_bad_settings(tmp_path: Path, settings: Settings) -> None:
    done = run_cli("render", str(settings.path))
    assert done.returncode == 0, done.stderr
    assert done.stdout == render_ini(settings)
    assert "s3cretpw" not in done.stdout

    bad = write_settings(tmp_path / "bad", "[[workers]]\nmax_processes = 0\n")
    done = run_cli("render", str(bad))
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith(f"{bad}: workers[0].max_processes: ")


def test_cli_requires_a_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        config_cli.main([])
    assert caught.value.code == 2


def test_circus_gives_each_worker_its_wid(tmp_path: Path, secret_env: None) -> None:
    """circus substitutes each process' wid into the args the ini gives (the worker's
    title and log lines show it): read back and formatted by circus' own Process."""
    from circus.process import Process

    settings = load_settings(write_settings(tmp_path))
    config = circus_config(tmp_path, render_ini(settings))
    watcher = config["watchers"][0]
    for wid in (1, 2, 7):
        process = Process(watcher["name"], wid, watcher["cmd"], args=watcher["args"], spawn=False)
        argv = process.format_args()
        assert argv[-2:] == ["--wid", str(wid)]


def test_without_log_file_workers_write_apart_from_circusd(
    tmp_path: Path, secret_env: None
) -> None:
    """No log_file: the workers' output goes to <stem>-workers.log, not circusd's own."""
    settings = load_settings(write_settings(tmp_path))
    config = circus_config(tmp_path, render_ini(settings))
    for watcher in config["watchers"]:
        stream = {"class": "WatchedFileStream", "filename": str(tmp_path / "djmaster-workers.log")}
        assert watcher["stdout_stream"] == stream
        assert watcher["stderr_stream"] == stream


def test_a_log_file_that_is_a_pipe_gets_no_circus_stream(tmp_path: Path, secret_env: None) -> None:
    """``log_file = "/proc/1/fd/1"`` in a container: circus' file streams need a seekable
    file (they open it "a+"), so the workers keep circusd's own output, the same pipe."""
    fifo = tmp_path / "output"
    os.mkfifo(fifo)
    settings = load_settings(write_settings(tmp_path, f'log_file = "{fifo}"\n' + TWO_BY_TWO))
    for watcher in circus_config(tmp_path, render_ini(settings))["watchers"]:
        assert watcher["stdout_stream"] == {} and watcher["stderr_stream"] == {}
