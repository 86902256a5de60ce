"""`djmaster-config init`: the annotated djmaster.toml and the circus.ini it writes."""

from __future__ import annotations

import dataclasses
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from circus.config import get_config

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 only
    import tomli as tomllib

from circus_djmaster.cli import config as config_cli
from circus_djmaster.config import init_template
from circus_djmaster.config.init_template import GROUPS, annotated_toml, template_settings
from circus_djmaster.config.options import SECTIONS, options_in
from circus_djmaster.config.settings import (
    DEFAULT_DATABASES,
    CircusSettings,
    MetricsSettings,
    load_settings,
    parse_settings,
)
from circus_djmaster.contracts.watchers import watcher_name

REPO_ROOT = Path(__file__).resolve().parents[3]
# "# key = value" (a default or an example), possibly followed by "  # note".
_COMMENTED_SETTING = re.compile(r"^# ([A-Za-z_]+ = .*|\[\[recurring\]\])$", re.MULTILINE)
# "# [metrics]  # uncomment ...": a table whose presence turns a feature on.
_COMMENTED_TABLE = re.compile(r"^# (\[[a-z]+\])  # .*$", re.MULTILINE)


def uncommented(text: str) -> str:
    """The annotated file with every commented-out setting (and table, and the example
    recurring entry, which is commented out whole) switched on."""
    return _COMMENTED_TABLE.sub(r"\1", _COMMENTED_SETTING.sub(r"\1", text))


def run_init(*args: str) -> int:
    return config_cli.main(["init", *args])


# ------------------------------------------------------------ the template


def test_template_is_stable() -> None:
    assert annotated_toml() == annotated_toml()
    assert annotated_toml().endswith("\n")
    assert "\t" not in annotated_toml()


def test_template_parses_into_the_example(tmp_path: Path) -> None:
    settings = template_settings(tmp_path / "djmaster.toml")
    assert settings.working_directory == tmp_path
    assert (settings.monitor_interval, settings.polling_interval) == (5.0, 30.0)
    assert settings.log_file is None  # commented out: init needs no log folder
    assert settings.pid_file is None
    assert (settings.log_level, settings.listen, settings.app) == ("info", True, None)
    assert dict(settings.callbacks) == {}
    assert [(d.name, d.url_template) for d in settings.databases] == [
        ("primary", "${DJMASTER_DATABASE_URL}")
    ]
    default, mail = settings.workers
    assert (default.name, default.queues) == ("default", ("default",))
    assert (default.max_processes, default.max_threads) == (2, 2)
    assert default.max_memory == 300 * 1024 * 1024
    assert default.max_execution == 3600.0
    assert (default.max_attempts, default.max_run_time) == (25, 4 * 3600.0)
    assert (mail.name, mail.queues, mail.max_processes, mail.max_threads) == (
        "mail",
        ("mail",),
        1,
        1,
    )
    assert (mail.max_memory, mail.max_execution, mail.hard_max_memory) == (None, None, None)
    assert settings.circus == CircusSettings(
        endpoint="tcp://127.0.0.1:5555",
        pubsub_endpoint="tcp://127.0.0.1:5556",
        stats_endpoint="tcp://127.0.0.1:5557",
        check_delay=5.0,
        logoutput="-",
        stop_timeout=None,
    )
    assert settings.metrics is None


def test_template_loads_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "djmaster.toml"
    path.write_text(annotated_toml(), encoding="utf-8")
    assert load_settings(path) == template_settings(path)


def test_template_names_every_option_with_its_doc() -> None:
    text = annotated_toml()
    data = tomllib.loads(uncommented(text))
    for section in SECTIONS:
        names = {option.name for option in options_in(section.name)}
        for option in options_in(section.name):
            assert f"# {option.doc}" in text, option
        if section.name == "":
            tables = {s.name for s in SECTIONS if s.name}
            assert set(data) - tables == names
        elif section.name == "workers":
            assert len(data["workers"]) == len(GROUPS) == 2
            for group in data["workers"]:
                assert set(group) == names  # every group lists every option
        elif section.name == "databases":
            assert set(data["databases"]) == {*DEFAULT_DATABASES, "secondary"}
        elif section.name == "recurring":
            # An entry takes cron or every: every is shown as the alternative.
            assert set(data["recurring"][0]) == names - {"every"}
            assert '\n# (instead of cron) every = "5m"  # example\n' in text
        else:
            assert set(data[section.name]) == names, section.name
    assert "no example" not in text  # every option without a default has an example


def test_commented_lines_show_the_defaults(tmp_path: Path) -> None:
    # Switching every commented-out line on gives a valid file, in which the options
    # the examples do not set keep their defaults.
    data = tomllib.loads(uncommented(annotated_toml()))
    settings = parse_settings(data, tmp_path / "djmaster.toml", environ={})
    mail = settings.workers[1]
    for option in options_in("workers"):
        if option.default is not None and option.name not in GROUPS[1]:
            assert getattr(mail, option.name) == option.default, option.name
    template = template_settings(tmp_path / "djmaster.toml")
    assert settings.circus == dataclasses.replace(template.circus, stop_timeout=90.0)
    assert settings.log_file == tmp_path / "log" / "djmaster.log"
    assert settings.circus.stop_timeout == 90.0
    assert settings.metrics == MetricsSettings(port=9188, host="127.0.0.1")
    assert set(settings.callbacks) == {option.name for option in options_in("callbacks")}
    assert [d.name for d in settings.databases] == ["primary", "secondary"]
    (nightly,) = settings.recurring
    assert (nightly.name, nightly.cron, nightly.database) == (
        "nightly_report",
        "0 3 * * *",
        "primary",
    )


def test_template_explains_databases_and_keeps_secrets_out() -> None:
    text = annotated_toml()
    assert '\nprimary = "${DJMASTER_DATABASE_URL}"\n' in text
    assert "Keep secrets out of files and command lines" in text
    assert "export DJMASTER_DATABASE_URL=" in text
    assert "postgresql://" not in text.replace("postgresql://USER:PASSWORD@", "")


def test_template_commented_defaults_look_like_the_seed() -> None:
    text = annotated_toml()
    assert '\n# monitor_interval = "5s"\n' in text
    assert '\n# max_run_time = "4h"\n' in text
    assert "\n# max_attempts = 25\n" in text
    assert '\nmax_memory = "300MB"  # default: unset\n' in text
    assert '\n# before_fork = "myapp.hooks:before_fork"  # example\n' in text
    assert "\n[circus]\n" in text and "\n[callbacks]\n" in text
    # Present, [metrics] opens a port: the template leaves it commented out.
    assert "\n# [metrics]  # uncomment" in text and "\n[metrics]" not in text


# --------------------------------------------------------------------- init


def test_init_writes_both_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "conf"
    assert run_init(str(folder)) == 0
    out, err = capsys.readouterr()
    toml_path, ini_path = folder / "djmaster.toml", folder / "circus.ini"
    assert toml_path.read_text(encoding="utf-8") == annotated_toml()
    for path in (toml_path, ini_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        assert str(path) in out
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]
    # next steps
    assert "DJMASTER_DATABASE_URL" in out
    assert f"djmaster migrate --settings {toml_path}" in out
    assert f"circusd {ini_path}" in out
    assert err == ""  # no warning (e.g. no missing log folder)

    settings = load_settings(toml_path)
    assert [group.name for group in settings.workers] == ["default", "mail"]
    config = get_config(str(ini_path))
    names = {watcher["name"] for watcher in config["watchers"]}
    assert names == {watcher_name("default", "primary"), watcher_name("mail", "primary")}
    for watcher in config["watchers"]:
        assert watcher["working_dir"] == str(folder)
        assert str(toml_path) in watcher["args"]  # absolute
    assert [plugin["settings"] for plugin in config["plugins"]] == [str(toml_path)]


def test_init_ini_is_what_render_writes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_init(str(tmp_path)) == 0
    capsys.readouterr()
    assert config_cli.main(["render", str(tmp_path / "djmaster.toml")]) == 0
    assert capsys.readouterr().out == (tmp_path / "circus.ini").read_text(encoding="utf-8")


def test_init_defaults_to_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert run_init() == 0
    assert (tmp_path / "djmaster.toml").is_file() and (tmp_path / "circus.ini").is_file()
    out = capsys.readouterr().out
    assert "djmaster migrate --settings djmaster.toml" in out
    assert "circusd circus.ini" in out


def test_init_creates_a_nested_folder(tmp_path: Path) -> None:
    folder = tmp_path / "a" / "b" / "c"
    assert run_init(str(folder)) == 0
    assert load_settings(folder / "djmaster.toml").working_directory == folder
    assert get_config(str(folder / "circus.ini"))["watchers"]


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def test_init_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_init(str(tmp_path)) == 0
    for path in tmp_path.iterdir():
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))  # an mtime a rewrite would change
    before = _snapshot(tmp_path)
    capsys.readouterr()

    assert run_init(str(tmp_path)) == 1
    out, err = capsys.readouterr()
    assert _snapshot(tmp_path) == before
    assert f"{tmp_path / 'djmaster.toml'} already exists" in err
    assert f"{tmp_path / 'circus.ini'} already exists" in err
    assert "--force" in err
    assert out == ""


@pytest.mark.parametrize("existing", ["djmaster.toml", "circus.ini"])
def test_init_writes_nothing_when_either_file_exists(tmp_path: Path, existing: str) -> None:
    (tmp_path / existing).write_text("# mine\n", encoding="utf-8")
    assert run_init(str(tmp_path)) == 1
    assert [p.name for p in tmp_path.iterdir()] == [existing]
    assert (tmp_path / existing).read_text(encoding="utf-8") == "# mine\n"


def test_init_force_overwrites(tmp_path: Path) -> None:
    (tmp_path / "djmaster.toml").write_text("# mine\n", encoding="utf-8")
    (tmp_path / "circus.ini").write_text("# mine\n", encoding="utf-8")
    assert run_init(str(tmp_path), "--force") == 0
    assert (tmp_path / "djmaster.toml").read_text(encoding="utf-8") == annotated_toml()
    assert "[plugin:djmaster]" in (tmp_path / "circus.ini").read_text(encoding="utf-8")


def test_init_writes_nothing_where_circus_ini_cannot_point(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # circus pastes the settings path into the plugin's command line: no spaces.
    folder = tmp_path / "with space"
    assert run_init(str(folder)) == 2
    assert "space" in capsys.readouterr().err
    assert not folder.exists()


def test_init_creates_the_log_folder_if_the_template_sets_log_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The template leaves log_file commented out; should that change, init must still
    # create the folder (circusd drops a watcher whose stream folder is missing).
    text = annotated_toml().replace('# log_file = "log/', 'log_file = "log/')
    monkeypatch.setattr(init_template, "annotated_toml", lambda: text)
    assert run_init(str(tmp_path)) == 0
    assert (tmp_path / "log").is_dir()
    assert load_settings(tmp_path / "djmaster.toml").log_file == tmp_path / "log" / "djmaster.log"
    assert "warning" not in capsys.readouterr().err


def test_init_as_a_script(tmp_path: Path) -> None:
    folder = tmp_path / "app"
    command = [sys.executable, "-m", "circus_djmaster.cli.config", "init", str(folder)]
    first = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
    assert first.returncode == 0, first.stderr
    assert "Next steps" in first.stdout
    assert (folder / "djmaster.toml").read_text(encoding="utf-8") == annotated_toml()
    again = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
    assert again.returncode == 1
    assert "--force" in again.stderr
