"""Durations, sizes and the other value kinds of the settings file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from circus_djmaster.config.kinds import (
    BOOLEAN,
    CALLABLE,
    ENDPOINT,
    LOGOUTPUT,
    MODULE,
    NAME,
    PATH,
    STRINGS,
    choice,
    duration,
    format_duration,
    format_size,
    integer,
    parse_duration,
    parse_size,
)

BASE = Path("/etc/djmaster")


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (0, 0.0),
        (30, 30.0),
        (2.5, 2.5),
        ("30", 30.0),
        ("0.5", 0.5),
        ("500ms", 0.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("4h", 14400.0),
        ("1d", 86400.0),
        ("1h30m", 5400.0),
        ("1h 30m", 5400.0),
        ("1m30s500ms", 90.5),
        ("1.5h", 5400.0),
        (" 5M ", 300.0),
    ],
)
def test_parse_duration_accepts(value: Any, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", '"" is not a duration (examples: 30s'),
        ("h", '"h" is not a duration'),
        ("5 minutes", '"5 minutes" is not a duration'),
        ("1h30", '"1h30" is not a duration'),
        ("-1s", '"-1s" is not a duration'),
        ("1w", '"1w" is not a duration'),
        (-1, "-1 is not a duration: it must not be negative"),
        (float("inf"), "inf is not a duration: it must be finite"),
        (True, "true is not a duration: expected a number of seconds"),
        ([1], "[1] is not a duration"),
    ],
)
def test_parse_duration_rejects(value: Any, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_duration(value)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (0, 0),
        (1048576, 1048576),
        (2.0, 2),
        ("100", 100),
        ("100B", 100),
        ("512KB", 512 * 1024),
        ("300MB", 300 * 1024**2),
        ("300M", 300 * 1024**2),
        ("300mb", 300 * 1024**2),
        ("300 MiB", 300 * 1024**2),
        ("1GB", 1024**3),
        ("1.5GiB", 1536 * 1024**2),
        ("2k", 2048),
        ("1TB", 1024**4),
    ],
)
def test_parse_size_accepts(value: Any, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("300XB", '"300XB" is not a size (examples: 300MB, 1GB)'),
        ("MB", '"MB" is not a size'),
        ("", '"" is not a size'),
        ("1PB", '"1PB" is not a size'),
        ("-5MB", '"-5MB" is not a size'),
        (1.5, "1.5 is not a size: a number of bytes must be whole"),
        (-1, "-1 is not a size: it must not be negative"),
        (False, "false is not a size: expected a number of bytes"),
    ],
)
def test_parse_size_rejects(value: Any, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_size(value)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (5, "5s"), (90, "1m30s"), (14400, "4h"), (90061, "1d1h1m1s"), (0.5, "500ms")],
)
def test_format_duration_reads_back(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


def test_format_duration_of_fractions_reads_back() -> None:
    for seconds in (1.5, 0.0005, 2.25):
        assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize(
    ("size", "text"), [(0, "0"), (1000, "1000"), (2048, "2KB"), (300 * 1024**2, "300MB")]
)
def test_format_size_reads_back(size: int, text: str) -> None:
    assert format_size(size) == text
    assert parse_size(text) == size


# The other kinds: (kind, raw value, parsed value).
@pytest.mark.parametrize(
    ("kind", "value", "parsed"),
    [
        (integer(minimum=1), 3, 3),
        (integer(minimum=1), " 3 ", 3),
        (integer(), "-2", -2),
        (BOOLEAN, True, True),
        (BOOLEAN, "False", False),
        (duration(positive=True), "1m", 60.0),
        (choice("debug", "info"), "INFO", "info"),
        (PATH, "log/x.log", BASE / "log" / "x.log"),
        (PATH, "../x.log", Path("/etc/x.log")),
        (PATH, "/var/x.log", Path("/var/x.log")),
        (LOGOUTPUT, "-", "-"),
        (LOGOUTPUT, "circus.log", "/etc/djmaster/circus.log"),
        (MODULE, "myapp.jobs", "myapp.jobs"),
        (CALLABLE, "myapp.hooks:Hooks.after_fork", "myapp.hooks:Hooks.after_fork"),
        (ENDPOINT, "tcp://127.0.0.1:5555", "tcp://127.0.0.1:5555"),
        (ENDPOINT, "tcp://[::1]:5555", "tcp://[::1]:5555"),
        (ENDPOINT, "ipc:///tmp/circus.sock", "ipc:///tmp/circus.sock"),
        (NAME, "worker_1", "worker_1"),
        (STRINGS, ["a", "b c"], ("a", "b c")),
        (STRINGS, [], ()),
    ],
)
def test_kinds_accept(kind: Any, value: Any, parsed: Any) -> None:
    assert kind.parse(value, BASE) == parsed


def test_path_expands_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/someone")
    assert PATH.parse("~/x.pid", BASE) == Path("/home/someone/x.pid")


@pytest.mark.parametrize(
    ("kind", "value", "message"),
    [
        (integer(minimum=1), 0, "0 is too small (minimum 1)"),
        (integer(minimum=1), 1.5, "expected an integer, got float 1.5"),
        (integer(minimum=1), True, "expected an integer, got boolean true"),
        (integer(), "two", 'expected an integer, got string "two"'),
        (BOOLEAN, 1, "expected true or false, got integer 1"),
        (BOOLEAN, "yes", 'expected true or false, got string "yes"'),
        (duration(positive=True), 0, "0 must be greater than 0"),
        (choice("debug", "info"), "verbose", '"verbose" is not one of debug, info'),
        (PATH, "", "must not be empty"),
        (PATH, 3, "expected a string, got integer 3"),
        (MODULE, "my-app", '"my-app" is not a module name'),
        (MODULE, "myapp:jobs", '"myapp:jobs" is not a module name'),
        (CALLABLE, "myapp.hooks", '"myapp.hooks" is not "module.path:attr"'),
        (CALLABLE, "myapp.hooks:", "is not"),
        (CALLABLE, ":attr", "is not"),
        (CALLABLE, "a b:c", "is not"),
        (ENDPOINT, "127.0.0.1:5555", "is not tcp://HOST:PORT or ipc://PATH"),
        (ENDPOINT, "tcp://127.0.0.1", "is not tcp://HOST:PORT"),
        (ENDPOINT, "tcp://127.0.0.1:0", "is not tcp://HOST:PORT"),
        (ENDPOINT, "tcp://127.0.0.1:65536", "is not tcp://HOST:PORT"),
        (ENDPOINT, "tcp://my host:5555", "is not tcp://HOST:PORT"),
        (ENDPOINT, "ipc://", "is not tcp://HOST:PORT or ipc://PATH"),
        (NAME, "my-group", '"my-group" must match ^[A-Za-z0-9_]+$'),
        (NAME, "a.b", "it becomes part of circus watcher names"),
        (STRINGS, "mail", 'expected an array of non-empty strings, got string "mail"'),
        (STRINGS, ["mail", ""], "expected an array of non-empty strings"),
        (STRINGS, ["mail", 1], "expected an array of non-empty strings"),
    ],
)
def test_kinds_reject(kind: Any, value: Any, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        kind.parse(value, BASE)
    assert message in str(caught.value)
