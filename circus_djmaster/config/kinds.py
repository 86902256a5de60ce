"""Value kinds of the settings file: how a raw TOML value becomes a duration
(``"1h30m"``), a size (``"300MB"``), a path, an endpoint, …

Parsers raise :class:`ValueError` with a message meant for a human reading a settings
error, so :mod:`circus_djmaster.config.settings` can prefix it with the file and key as is.
Messages show the offending value, except for URLs, which may hold a password.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from circus_djmaster.common.recurring import check_cron, check_timezone

__all__ = [
    "ARRAY",
    "BOOLEAN",
    "CALLABLE",
    "CRON",
    "ENDPOINT",
    "HOST",
    "LOGOUTPUT",
    "MODULE",
    "MODULES",
    "NAME",
    "NAME_PATTERN",
    "PATH",
    "PORT",
    "SIZE",
    "STRING",
    "STRINGS",
    "TABLE",
    "TIMEZONE",
    "URL",
    "Kind",
    "choice",
    "describe",
    "duration",
    "format_duration",
    "format_size",
    "integer",
    "is_loopback",
    "parse_duration",
    "parse_size",
    "toml_type",
]

# Seconds per duration unit. Months and years are left out on purpose: they
# have no fixed length and nobody sets a job timeout in them.
_DURATION_UNITS: dict[str, float] = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_DURATION_PART = re.compile(rf"\s*({_NUMBER})\s*(ms|s|m|h|d)", re.IGNORECASE)
_BARE_NUMBER = re.compile(rf"\s*{_NUMBER}\s*")

# KB/MB/... are powers of 1024 like the seed's ``max_memory`` in MB and like
# most people mean when talking about RSS; the IEC spellings are accepted too.
_SIZE_UNITS: dict[str, int] = {"": 1, "b": 1}
for _power, _letter in enumerate("kmgt", start=1):
    for _suffix in (_letter, _letter + "b", _letter + "ib"):
        _SIZE_UNITS[_suffix] = 1024**_power
_SIZE = re.compile(rf"\s*({_NUMBER})\s*([a-z]*)\s*", re.IGNORECASE)

DURATION_EXAMPLES = "examples: 30s, 5m, 1h30m, 500ms"
SIZE_EXAMPLES = "examples: 300MB, 1GB"


def describe(value: Any) -> str:
    """Show a settings value the way it was (probably) written in TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(describe(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{...}"
    return str(value)


def _number(value: Any, what: str, unit: str, examples: str) -> float:
    """A real, finite, non-negative number. Booleans are not numbers here even
    though Python thinks so: ``max_run_time = true`` is a mistake, not 1 second."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(
            f"{describe(value)} is not a {what}: expected a number of {unit} "
            f"or a string ({examples})"
        )
    if not math.isfinite(value):
        raise ValueError(f"{describe(value)} is not a {what}: it must be finite")
    if value < 0:
        raise ValueError(f"{describe(value)} is not a {what}: it must not be negative")
    return float(value)


def parse_duration(value: Any) -> float:
    """Seconds from a number (``30``, ``0.5``) or a string (``"500ms"``, ``"1h30m"``).

    A bare numeric string (``"30"``) means seconds, so ``"${TIMEOUT:-30}"`` works.
    """
    if isinstance(value, str):
        text = value.strip()
        if _BARE_NUMBER.fullmatch(text):
            return float(text)
        total = 0.0
        position = 0
        while position < len(text):
            match = _DURATION_PART.match(text, position)
            if match is None:
                break
            total += float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]
            position = match.end()
        else:
            if text:
                return total
        raise ValueError(f"{describe(value)} is not a duration ({DURATION_EXAMPLES})")
    return _number(value, "duration", "seconds", DURATION_EXAMPLES)


def parse_size(value: Any) -> int:
    """Bytes from an integer (``1048576``) or a string (``"300MB"``, ``"1.5GiB"``)."""
    if isinstance(value, str):
        match = _SIZE.fullmatch(value)
        multiplier = _SIZE_UNITS.get(match.group(2).lower()) if match else None
        if match is None or multiplier is None:
            raise ValueError(f"{describe(value)} is not a size ({SIZE_EXAMPLES})")
        return round(float(match.group(1)) * multiplier)
    number = _number(value, "size", "bytes", SIZE_EXAMPLES)
    if not number.is_integer():
        raise ValueError(f"{describe(value)} is not a size: a number of bytes must be whole")
    return int(number)


def format_duration(seconds: float) -> str:
    """A spelling that :func:`parse_duration` reads back exactly: 14400 -> ``"4h"``."""
    if seconds == int(seconds):
        remaining = int(seconds)
        parts = []
        for unit, length in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
            count, remaining = divmod(remaining, length)
            if count:
                parts.append(f"{count}{unit}")
        return "".join(parts) or "0s"
    milliseconds = seconds * 1000
    if seconds < 1 and milliseconds == int(milliseconds):
        return f"{int(milliseconds)}ms"
    return f"{seconds!r}s"


def format_size(size: int) -> str:
    """The largest unit that divides the size exactly: 314572800 -> ``"300MB"``."""
    for unit, multiplier in (("TB", 1024**4), ("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if size and size % multiplier == 0:
            return f"{size // multiplier}{unit}"
    return str(size)


# Group and database names become part of circus watcher names ``djmaster-<group>-<db>``:
# no dots there (spec §7), and no hyphens so that the name splits back unambiguously.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_]+")
NAME_RULE = f"must match ^{NAME_PATTERN.pattern}$ (it becomes part of circus watcher names)"


_TOML_TYPES = {bool: "boolean", int: "integer", float: "float", str: "string"}


def toml_type(value: Any) -> str:
    """The TOML name of a decoded value's type, for error messages."""
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    return _TOML_TYPES.get(type(value), type(value).__name__)


def _type_error(expected: str, value: Any) -> ValueError:
    return ValueError(f"expected {expected}, got {toml_type(value)} {describe(value)}")


@dataclass(frozen=True)
class Kind:
    """A value type: its name in the docs, its parser and how to write a value back."""

    name: str
    parse: Callable[[Any, Path], Any]  # (raw TOML value, folder of the file) -> value
    to_toml: Callable[[Any], str] = describe


def integer(*, minimum: int | None = None, maximum: int | None = None) -> Kind:
    def parse(value: Any, _base: Path) -> int:
        # Strings are accepted so that "${PROCESSES:-2}" works.
        if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error("an integer", value)
        if minimum is not None and value < minimum:
            raise ValueError(f"{value} is too small (minimum {minimum})")
        if maximum is not None and value > maximum:
            raise ValueError(f"{value} is too large (maximum {maximum})")
        return value

    if minimum is not None and maximum is not None:
        name = f"integer {minimum} to {maximum}"
    elif minimum is not None:
        name = f"integer ≥ {minimum}"
    else:
        name = "integer"
    return Kind(name, parse)


#: ``read_ahead = "auto"`` (the default): the worker sizes each reserve itself.
AUTO = "auto"


def count_or_auto() -> Kind:
    """An integer ≥ 1, or ``"auto"``: parsed as the integer, or None for auto."""
    count = integer(minimum=1)

    def parse(value: Any, base: Path) -> int | None:
        if isinstance(value, str) and value.strip().lower() == AUTO:
            return None
        try:
            parsed: int = count.parse(value, base)
        except ValueError as error:
            raise ValueError(f'{error}; or "{AUTO}"') from None
        return parsed

    def to_toml(value: Any) -> str:
        return f'"{AUTO}"' if value is None else describe(value)

    return Kind(f'integer ≥ 1 or "{AUTO}"', parse, to_toml)


def _boolean(value: Any, _base: Path) -> bool:
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if not isinstance(value, bool):
        raise _type_error("true or false", value)
    return value


def duration(*, positive: bool = False) -> Kind:
    def parse(value: Any, _base: Path) -> float:
        seconds = parse_duration(value)
        if positive and seconds <= 0:
            raise ValueError(f"{describe(value)} must be greater than 0")
        return seconds

    return Kind(
        "duration > 0" if positive else "duration",
        parse,
        lambda seconds: json.dumps(format_duration(seconds)),
    )


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise _type_error("a string", value)
    if not value.strip():
        raise ValueError("must not be empty")
    # A NUL in a path or queue name can never work (the OS and libpq refuse it), and
    # other control characters only hide what a value really is.
    if _CONTROL.search(value):
        raise ValueError(f"{describe(value)} contains a control character")
    return value


def _is_dotted(text: str) -> bool:
    return all(part.isidentifier() for part in text.split("."))


def _module(value: Any, _base: Path) -> str:
    text = _string(value).strip()
    if not _is_dotted(text):
        raise ValueError(f"{describe(value)} is not a module name (example: myapp.jobs)")
    return text


def _callable_ref(value: Any, _base: Path) -> str:
    text = _string(value).strip()
    module, colon, attr = text.partition(":")
    if not (colon and _is_dotted(module) and _is_dotted(attr)):
        raise ValueError(
            f'{describe(value)} is not "module.path:attr" (example: myapp.hooks:after_fork)'
        )
    return text


def choice(*choices: str) -> Kind:
    def parse(value: Any, _base: Path) -> str:
        text = _string(value).strip().lower()
        if text not in choices:
            raise ValueError(f"{describe(value)} is not one of {', '.join(choices)}")
        return text

    return Kind("one of " + ", ".join(choices), parse)


def _path(value: Any, base: Path) -> Path:
    path = Path(_string(value)).expanduser()
    return Path(os.path.normpath(path if path.is_absolute() else base / path))


def _logoutput(value: Any, base: Path) -> str:
    return "-" if _string(value) == "-" else str(_path(value, base))


# zmq endpoints. No spaces: circus pastes plugin options into a command line.
_ENDPOINT = re.compile(r"tcp://(?:\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+):(\d{1,5})|ipc://\S+")


_LOOPBACK_HOSTS = ("localhost", "[::1]")


def _endpoint(value: Any, _base: Path) -> str:
    text = _string(value)
    match = _ENDPOINT.fullmatch(text)
    if match is None or (match.group(1) and not 0 < int(match.group(1)) < 65536):
        raise ValueError(f"{describe(value)} is not tcp://HOST:PORT or ipc://PATH")
    if text.startswith("tcp://"):
        host = text[len("tcp://") :].rsplit(":", 1)[0]
        # circusd's control socket has no authentication: whoever reaches it runs any
        # command. Keep it on this machine (docs/design.md §7).
        if host not in _LOOPBACK_HOSTS and not re.fullmatch(r"127(?:\.\d{1,3}){3}", host):
            raise ValueError(
                f"{describe(value)} is not on loopback: circus endpoints must be "
                "tcp://127.0.0.1:PORT (or localhost, [::1]) or ipc://PATH"
            )
    return text


_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")


def _host(value: Any, _base: Path) -> str:
    text = _string(value).strip()
    try:
        ipaddress.ip_address(text)
    except ValueError:
        if not _HOSTNAME.fullmatch(text):
            raise ValueError(
                f"{describe(value)} is not an IP address or a host name "
                '(examples: "127.0.0.1", "::1", "0.0.0.0", "localhost")'
            ) from None
    return text


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _name(value: Any, _base: Path) -> str:
    text = _string(value)
    if not NAME_PATTERN.fullmatch(text):
        raise ValueError(f"{describe(value)} {NAME_RULE}")
    return text


def _string_list(value: Any, _base: Path) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(
        isinstance(item, str) and item.strip() for item in value
    ):
        raise _type_error("an array of non-empty strings", value)
    return tuple(_string(item) for item in value)


def _url(value: Any, _base: Path) -> str:
    # Validated lazily by Database.url(); never echo the value, it may hold a password.
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {toml_type(value)}")
    if not value.strip():
        raise ValueError("must not be empty")
    return value


BOOLEAN = Kind("boolean", _boolean)


def _positive_size(value: Any, _base: Path) -> int:
    size = parse_size(value)
    if size <= 0:
        raise ValueError(f"{describe(value)} must be more than 0 ({SIZE_EXAMPLES})")
    return size


SIZE = Kind("size", _positive_size, lambda size: f'"{format_size(size)}"')
PATH = Kind("path", _path)
MODULE = Kind("module", _module)
CALLABLE = Kind('"module:attr"', _callable_ref)
ENDPOINT = Kind("endpoint", _endpoint)
NAME = Kind("name", _name)
STRINGS = Kind("array of strings", _string_list)
URL = Kind("URL", _url)
LOGOUTPUT = Kind('"-" or path', _logoutput)


def _plain_string(value: Any, _base: Path) -> str:
    return _string(value)


def _cron(value: Any, _base: Path) -> str:
    text = _string(value).strip()
    check_cron(text)  # cronsim's reason, e.g. "'61 * * * *' is not a cron expression: Bad minute"
    return text


def _timezone(value: Any, _base: Path) -> str:
    text = _string(value).strip()
    check_timezone(text)
    return text


def _array(value: Any, _base: Path) -> tuple[Any, ...]:
    if not isinstance(value, list):
        raise _type_error("an array", value)
    return tuple(_plain(value))


def _table(value: Any, _base: Path) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _type_error("a table", value)
    return dict(_plain(value))


def _plain(value: Any) -> Any:
    """A TOML value as JSON can hold it (what a job's handler stores): TOML dates and
    times are not JSON."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if value is None or isinstance(value, (str, bool, int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{value!r} cannot be a job argument (JSON has no {value!r})")
        return value
    raise ValueError(
        f"a TOML {type(value).__name__} cannot be a job argument (JSON): write it as a string"
    )


def _modules(value: Any, base: Path) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _type_error("an array of module names", value)
    return tuple(_module(item, base) for item in value)


STRING = Kind("string", _plain_string)
CRON = Kind("cron expression", _cron)
TIMEZONE = Kind("time zone", _timezone)
ARRAY = Kind("array", _array)
TABLE = Kind("table", _table, lambda value: "{...}")
MODULES = Kind("array of modules", _modules)
HOST = Kind("host", _host)
PORT = integer(minimum=1, maximum=65535)
