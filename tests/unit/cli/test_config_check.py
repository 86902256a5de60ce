"""`djmaster-config check`: every problem at once, warnings, and a summary when valid."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from circus_djmaster.cli import config as config_cli
from circus_djmaster.config.init_template import annotated_toml

REPO_ROOT = Path(__file__).resolve().parents[3]
SECRET = "s3cret-pw"
LITERAL_URL = f"postgresql://app:{SECRET}@db.example/reports"

GOOD = f"""\
[databases]
primary = "${{DJ_CHECK_URL}}"
reports = "{LITERAL_URL}"

[[workers]]
name = "default"
queues = ["default", "reports"]
max_processes = 2
max_threads = 3

[[workers]]
name = "mail"
queues = ["mail"]
"""

# Four mistakes in one file; check must report them all, not stop at the first.
BAD = """\
log_level = "loud"
colour = "blue"

[[workers]]
name = "default"
max_memory = "lots"
max_threads = 0
"""


def write(folder: Path, text: str, name: str = "djmaster.toml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _url_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DJ_CHECK_URL", f"postgresql://app:{SECRET}@db.example/jobs")
    monkeypatch.setenv("DJMASTER_DATABASE_URL", f"postgresql://app:{SECRET}@db.example/jobs")


def check(path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = config_cli.main(["check", str(path), *args])
    out, err = capsys.readouterr()
    assert SECRET not in out + err  # never a URL
    return code, out, err


def test_good_file_prints_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, GOOD)
    code, out, err = check(path, capsys)
    assert (code, err) == (0, "")
    assert f"{path}: OK" in out
    assert "databases: 2 (primary, reports)" in out
    assert "worker groups: 2 (default, mail)" in out
    assert "watchers: 2 groups x 2 databases = 4" in out
    assert "djmaster-mail-reports" in out
    assert "queues: default, mail, reports" in out
    assert "default: default, reports; up to 2 processes x 3 threads" in out
    assert "mail: mail; up to 1 process x 1 thread" in out


def test_summary_of_a_group_serving_every_queue(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, '[[workers]]\nname = "any"\n')
    code, out, _ = check(path, capsys)
    assert code == 0
    assert "watchers: 1 group x 1 database = 1 (djmaster-any-primary)" in out
    assert "any: all queues" in out


def test_the_init_template_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = check(write(tmp_path, annotated_toml()), capsys)
    assert (code, err) == (0, "")
    assert "watchers: 2 groups x 1 database = 2" in out


def test_every_problem_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, BAD)
    code, out, err = check(path, capsys)
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    expected = {
        "log_level": '"loud" is not one of',
        "colour": "unknown key",
        "workers[0].max_memory": '"lots" is not a size',
        "workers[0].max_threads": "0 is too small (minimum 1)",
    }
    for key, reason in expected.items():
        assert any(line.startswith(f"{path}: {key}: ") and reason in line for line in lines), (
            key,
            err,
        )
    assert lines[-1] == "djmaster-config: 4 problems found"
    assert len(lines) == 5


def test_render_time_problems_are_reported_together(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Valid for the loader, but circus.ini could not say it: a " ;" would start an ini
    # comment, and circus folds watcher names to lower case.
    path = write(
        tmp_path,
        'working_directory = "app ;old"\n[[workers]]\nname = "Mail"\n[[workers]]\nname = "mail"\n',
    )
    code, out, err = check(path, capsys)
    assert code == 2
    assert f"{path}: working_directory: " in err and "comment" in err
    assert f"{path}: workers[1].name: " in err and "only by case" in err
    assert err.splitlines()[-1] == "djmaster-config: 2 problems found"
    assert out == ""


def test_bad_interpreter_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = check(write(tmp_path, GOOD), capsys, "--python", "python3")
    assert code == 2
    assert "not an absolute path" in err


def test_unset_database_variable_is_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DJ_CHECK_URL")
    path = write(tmp_path, GOOD)
    code, out, err = check(path, capsys)
    assert code == 0
    assert f"{path}: OK" in out
    (warning,) = err.splitlines()
    assert warning.startswith(f"djmaster-config: warning: {path}: databases.primary: ")
    assert "environment variable DJ_CHECK_URL is not set" in warning


def test_variable_with_a_default_is_no_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DJ_CHECK_URL")
    path = write(tmp_path, '[databases]\nmain = "${DJ_CHECK_URL:-postgresql:///jobs}"\n'
                 '[[workers]]\nname = "w"\n')  # fmt: skip
    code, _, err = check(path, capsys)
    assert (code, err) == (0, "")


def test_missing_output_folders_are_warnings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, 'log_file = "log/djmaster.log"\npid_file = "pids/m.pid"\n' + GOOD)
    code, _, err = check(path, capsys)
    assert code == 0
    assert f"log_file: folder {tmp_path / 'log'} does not exist" in err
    assert f"pid_file: folder {tmp_path / 'pids'} does not exist" in err
    assert "`djmaster-config render` creates it" in err
    assert not (tmp_path / "log").exists()  # check changes nothing
    (tmp_path / "log").mkdir()
    (tmp_path / "pids").mkdir()
    assert check(path, capsys)[2] == ""


def test_check_says_how_long_a_graceful_stop_may_take(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = check(write(tmp_path, GOOD), capsys)
    assert (code, err) == (0, "")
    # max_run_time 4h by default: the service manager must wait that long.
    assert "stopping: up to 4h10s (graceful_timeout: max_run_time + 10s; declare your " in out


def test_a_graceful_timeout_longer_than_the_declared_stop_timeout_is_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """circus.ini's graceful_timeout is 4h by default, systemd's stop timeout 90s and
    Docker's 10s: they kill everything first, and nothing said so (issue 14)."""
    text = GOOD.replace('name = "mail"', 'name = "mail"\nmax_run_time = "60s"')
    path = write(tmp_path, text + '\n[circus]\nstop_timeout = "90s"\n')
    code, out, err = check(path, capsys)
    assert code == 0
    (warning,) = err.splitlines()
    assert warning.startswith(f"djmaster-config: warning: {path}: workers[0].max_run_time: ")
    assert (
        "graceful_timeout 4h10s (max_run_time + 10s) is longer than circus.stop_timeout 1m30s"
        in (warning)
    )
    assert "stop_timeout 1m30s" in out
    fixed = text.replace(
        'queues = ["default", "reports"]', 'queues = ["default"]\nmax_run_time = 80'
    )
    path = write(tmp_path, fixed + '\n[circus]\nstop_timeout = "90s"\n')
    assert check(path, capsys)[2] == ""  # 80s + 10s fits in 90s


def test_metrics_open_to_other_machines_are_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, GOOD + '\n[metrics]\nport = 9188\nhost = "0.0.0.0"\n')
    code, _, err = check(path, capsys)
    assert code == 0
    assert "metrics.host: 0.0.0.0 is not loopback" in err
    path = write(tmp_path, GOOD + "\n[metrics]\nport = 9188\n")
    assert check(path, capsys)[2] == ""


def test_missing_file_and_syntax_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = check(tmp_path / "nope.toml", capsys)
    assert code == 2
    assert f"{tmp_path / 'nope.toml'}: no such file" in err
    code, _, err = check(write(tmp_path, "[[workers]\n"), capsys)
    assert code == 2
    assert "TOML syntax error at line 1" in err


def test_check_as_a_script(tmp_path: Path) -> None:
    path = write(tmp_path, BAD)
    result = subprocess.run(
        [sys.executable, "-m", "circus_djmaster.cli.config", "check", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"{path}: workers[0].max_threads: " in result.stderr
    assert "4 problems found" in result.stderr


def test_a_bad_recurring_entry_is_reported_with_file_key_and_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        GOOD
        + '\n[[recurring]]\nname = "nightly"\ncallable = "app.jobs:report"\n'
        + 'cron = "0 25 * * *"\ntimezone = "Europe/Nowhere"\n',
    )
    code, out, err = check(path, capsys)
    assert code == 2 and out == ""
    assert f'{path}: recurring[0].cron: "0 25 * * *" is not a cron expression: Bad hour' in err
    assert f'{path}: recurring[0].timezone: "Europe/Nowhere" is not a time zone' in err


def test_recurring_entries_are_summed_up_and_an_unserved_queue_is_warned_about(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        GOOD
        + '\n[[recurring]]\nname = "nightly"\ncallable = "app.jobs:report"\n'
        + 'cron = "0 3 * * *"\nqueue = "reports"\n'
        + '\n[[recurring]]\nname = "lost"\ncallable = "app.jobs:tick"\nevery = "1m"\n'
        + 'queue = "nobody"\n',
    )
    code, out, err = check(path, capsys)
    assert code == 0
    assert '    nightly: cron "0 3 * * *" (UTC) -> app.jobs:report @primary' in out
    assert "    lost: every 60s -> app.jobs:tick @primary" in out
    assert 'recurring[1].queue: no worker group serves queue "nobody"' in err
