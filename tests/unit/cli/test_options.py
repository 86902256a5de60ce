"""What the two command lines share (cli/options.py): ``--settings`` wherever a command
takes it and ``$DJMASTER_SETTINGS``; durations in time options; ``--version``; shell
completion scripts generated from the parsers."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from circus_djmaster.cli import config as config_cli
from circus_djmaster.cli import main as cli
from circus_djmaster.cli.options import SETTINGS_ENV, settings_path, version
from circus_djmaster.exceptions import DjmasterError

REPO_ROOT = Path(__file__).resolve().parents[3]


def parse(*argv: str) -> argparse.Namespace:
    return cli.build_parser(every_command=True).parse_args(list(argv))


@pytest.fixture(autouse=True)
def _no_settings_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SETTINGS_ENV, raising=False)


@pytest.mark.parametrize(
    "argv",
    [
        ["--settings", "s.toml", "jobs", "list"],
        ["jobs", "--settings", "s.toml", "list"],
        ["jobs", "list", "--settings", "s.toml"],  # was "--settings is required" (issue 14)
        ["jobs", "retry", "--all-failed", "--settings", "s.toml"],
        ["--settings", "s.toml", "status"],
        ["status", "--settings", "s.toml"],
        ["wait", "--settings=s.toml"],
        ["--settings", "s.toml", "migrate"],
    ],
)
def test_settings_are_taken_before_or_after_the_command(argv: list[str]) -> None:
    assert settings_path(parse(*argv)) == "s.toml"


def test_jobs_database_is_taken_after_the_action_too() -> None:
    assert parse("jobs", "list", "--database", "reports", "--settings", "s.toml").database == (
        "reports"
    )
    assert parse("jobs", "--database", "reports", "list").database == "reports"


def test_settings_come_from_the_environment_else_an_error_names_both_ways(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(DjmasterError, match=f"give --settings FILE or set {SETTINGS_ENV}"):
        settings_path(parse("status"))
    monkeypatch.setenv(SETTINGS_ENV, "/etc/djmaster.toml")
    assert settings_path(parse("status")) == "/etc/djmaster.toml"
    assert settings_path(parse("status", "--settings", "given.toml")) == "given.toml"


def test_djmaster_config_takes_settings_as_argument_option_or_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parser = config_cli.build_parser()
    assert settings_path(parser.parse_args(["check", "a.toml"])) == "a.toml"
    assert settings_path(parser.parse_args(["render", "--settings", "a.toml", "-o", "x"])) == (
        "a.toml"
    )
    with pytest.raises(DjmasterError, match="two settings files"):
        settings_path(parser.parse_args(["check", "a.toml", "--settings", "b.toml"]))
    monkeypatch.setenv(SETTINGS_ENV, "env.toml")
    assert settings_path(parser.parse_args(["check"])) == "env.toml"


@pytest.mark.parametrize(
    ("argv", "attribute", "seconds"),
    [
        (["wait", "--timeout", "5m"], "timeout", 300.0),  # was refused (issue 14)
        (["wait", "--timeout", "90"], "timeout", 90.0),
        (["wait"], "timeout", 300.0),
        (["status", "--watch", "--interval", "500ms"], "interval", 0.5),
        (["enqueue", "m:f", "--in", "1h30m"], "delay", 5400.0),
    ],
)
def test_time_options_take_durations(argv: list[str], attribute: str, seconds: float) -> None:
    assert getattr(parse(*argv), attribute) == seconds


def test_a_bad_duration_is_a_usage_error_that_says_what_is_expected(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse("wait", "--timeout", "soon")
    assert exit_.value.code == 2
    assert '"soon" is not a duration (examples: 30s, 5m, 1h30m, 500ms)' in capsys.readouterr().err


@pytest.mark.parametrize("program", ["circus_djmaster", "circus_djmaster.cli.config"])
def test_both_programs_print_their_version(program: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", program, "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr
    name = "djmaster" if program == "circus_djmaster" else "djmaster-config"
    assert result.stdout == f"{name} {version()}\n"
    assert version()[0].isdigit()


def completion(program: str, shell: str) -> str:
    module = "circus_djmaster" if program == "djmaster" else "circus_djmaster.cli.config"
    result = subprocess.run(
        [sys.executable, "-m", module, "completion", shell],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("program", ["djmaster", "djmaster-config"])
def test_completion_scripts_are_valid_shell(program: str, tmp_path: Path) -> None:
    checked = []
    for shell in ("bash", "zsh"):
        script = tmp_path / f"{program}.{shell}"
        script.write_text(completion(program, shell), encoding="utf-8")
        binary = shutil.which(shell)
        if binary is None:  # zsh is not on every machine; bash is
            continue
        result = subprocess.run(
            [binary, "-n", str(script)], capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0, result.stderr
        checked.append(shell)
    assert "bash" in checked


def test_bash_completes_commands_and_their_options(tmp_path: Path) -> None:
    """Source the generated script in bash and ask it, as bash does on TAB."""
    script = tmp_path / "djmaster.bash"
    script.write_text(completion("djmaster", "bash"), encoding="utf-8")

    def complete(*words: str) -> set[str]:
        line = " ".join(["djmaster", *words])
        program = (
            f"source {script}\n"
            f"COMP_WORDS=(djmaster {' '.join(words)}); COMP_CWORD={len(words)}\n"
            f"COMP_LINE='{line}'; COMP_POINT={len(line)}\n"
            'func=$(complete -p djmaster | sed -E "s/.*-F ([^ ]+) .*/\\1/")\n'
            '$func djmaster "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"\n'
            'printf "%s\\n" "${COMPREPLY[@]}"\n'
        )
        result = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        return {word.strip() for word in result.stdout.splitlines()}

    assert {"status", "jobs", "wait", "completion"} <= complete("")
    assert complete("sta") == {"status"}
    assert {"--watch", "--check", "--settings"} <= complete("status", "--")
