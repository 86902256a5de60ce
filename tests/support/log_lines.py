"""Lines of the djmaster log with their times (circus_djmaster/logs.py's format:
``2026-01-31 12:00:00,123 [PID] LEVEL name: message``, local time)."""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterator
from dataclasses import dataclass

_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \[(\d+)\] (\w+) (.*)$")


@dataclass(frozen=True)
class LogLine:
    at: float  # wall clock (epoch seconds)
    pid: int
    level: str
    text: str  # the rest: logger name and message


def parse(log_text: str) -> Iterator[LogLine]:
    for line in log_text.splitlines():
        match = _LINE.match(line)
        if match is None:
            continue  # a traceback's continuation, a worker's stray print
        when = datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
        yield LogLine(when.timestamp(), int(match.group(2)), match.group(3), match.group(4))


def matching(log_text: str, pattern: str) -> list[tuple[LogLine, re.Match[str]]]:
    """Every line whose text matches the regular expression ``pattern``."""
    regex = re.compile(pattern)
    found = []
    for line in parse(log_text):
        match = regex.search(line.text)
        if match is not None:
            found.append((line, match))
    return found
