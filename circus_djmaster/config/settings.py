"""Settings: one TOML file, every option declared once in :mod:`.options` (``OPTIONS``).

Loading, validation, ``docs/settings.md`` (:mod:`circus_djmaster.config.docs`) and the
annotated file of ``djmaster-config init`` are all driven by the declarations, so an
option cannot be documented but not validated, or validated but not documented.

Problems are collected rather than raised at the first one: someone fixing a settings
file wants to see every mistake at once, each with the file, the dotted key and a reason.
Keys are written ``workers[1].max_memory`` (array index, not group name) everywhere.

About 400 lines: the settings' model (the dataclasses the rest of the package reads)
and its loader side by side, so that a key's parsing and its field stay together.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import sys
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from circus_djmaster.common.recurring import RecurringJob
from circus_djmaster.config.kinds import (
    NAME,
    describe,
    format_size,
    toml_type,
)
from circus_djmaster.config.options import SECTIONS, Option, _Context, options_in
from circus_djmaster.exceptions import Problem, SettingsError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 only
    import tomli as tomllib

__all__ = [
    "DEFAULT_DATABASES",
    "LOCK_MARGIN",
    "CircusSettings",
    "Database",
    "MetricsSettings",
    "RecurringJob",
    "Settings",
    "WorkerGroup",
    "expand_env",
    "load_settings",
    "parse_settings",
]

DEFAULT_DATABASES: Mapping[str, str] = types.MappingProxyType(
    {"primary": "${DJMASTER_DATABASE_URL}"}
)


# ----------------------------------------------------------------- environment

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(text: str, environ: Mapping[str, str] | None = None) -> str:
    """Replace ``${VAR}`` and ``${VAR:-default}`` (default when unset or empty, as in sh).

    Raises ValueError naming the unset variables (never the text: it may be a URL
    holding a password).
    """
    env = os.environ if environ is None else environ
    unset: list[str] = []

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = env.get(name)
        if default is not None and not value:
            return default
        if value is None:
            unset.append(name)
            return ""
        return value

    result = _VARIABLE.sub(substitute, text)
    if unset:
        names = list(dict.fromkeys(unset))
        if len(names) == 1:
            raise ValueError(f"environment variable {names[0]} is not set")
        raise ValueError(f"environment variables {', '.join(names)} are not set")
    return result


def _expand_deep(value: Any, environ: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return expand_env(value, environ)
    if isinstance(value, list):
        return [_expand_deep(item, environ) for item in value]
    return value


# ---------------------------------------------------------------------- results


@dataclass(frozen=True, repr=False)
class Database:
    name: str
    url_template: str  # as written, ${VAR} not expanded: it may hold a password
    path: Path | None = field(default=None, compare=False)  # settings file, for errors

    def url(self, environ: Mapping[str, str] | None = None) -> str:
        """The connection URL with ``${VAR}`` expanded from the environment now."""
        key = _join("databases", self.name)
        try:
            url = expand_env(self.url_template, environ)
        except ValueError as error:
            raise SettingsError(self.path, [Problem(key, str(error))]) from None
        if not url.strip():
            raise SettingsError(self.path, [Problem(key, "the URL is empty")])
        return url

    def __repr__(self) -> str:
        return f"Database(name={self.name!r}, url_template=<hidden>)"


@dataclass(frozen=True)
class WorkerGroup:
    index: int
    name: str
    queues: tuple[str, ...]
    max_processes: int
    max_threads: int
    max_memory: int | None
    hard_max_memory: int | None
    max_execution: float | None
    idle_timeout: float
    sleep_delay: float
    read_ahead: int | None  # None: "auto" (worker/read_ahead.py)
    max_attempts: int
    max_run_time: float
    min_priority: int | None
    max_priority: int | None
    destroy_failed_jobs: bool
    keep_finished: float = 0.0  # seconds; 0: a succeeded job is deleted at once
    # With a default: groups built in code (tests) need not spell it out.
    spawn: str = "exec"  # "exec" or "fork" (docs/master.md, "Fork mode")


@dataclass(frozen=True)
class CircusSettings:
    endpoint: str
    pubsub_endpoint: str
    stats_endpoint: str
    check_delay: float
    logoutput: str  # "-" (stdout) or an absolute path
    stop_timeout: float | None  # seconds the service manager gives circusd to stop


@dataclass(frozen=True)
class MetricsSettings:
    """``[metrics]``: where the master serves Prometheus metrics."""

    port: int
    host: str


@dataclass(frozen=True)
class Settings:
    path: Path
    working_directory: Path
    monitor_interval: float
    polling_interval: float
    pid_file: Path | None
    log_file: Path | None
    log_level: str
    log_format: str  # "text" or "json"
    database_timeout: float
    listen: bool
    app: str | None
    preload_timeout: float
    recurring_modules: tuple[str, ...]
    callbacks: Mapping[str, str]  # only those set; read-only
    databases: tuple[Database, ...]
    workers: tuple[WorkerGroup, ...]
    circus: CircusSettings
    #: ``[[recurring]]`` entries, each with its ``database`` resolved.
    recurring: tuple[RecurringJob, ...] = ()
    metrics: MetricsSettings | None = None  # None: no [metrics] table, no endpoint

    def group(self, name: str) -> WorkerGroup:
        for group in self.workers:
            if group.name == name:
                return group
        raise self._missing("workers", "worker group", name, [g.name for g in self.workers])

    def database(self, name: str) -> Database:
        for database in self.databases:
            if database.name == name:
                return database
        raise self._missing("databases", "database", name, [d.name for d in self.databases])

    def _missing(self, key: str, what: str, name: str, choices: list[str]) -> SettingsError:
        reason = f"no {what} named {describe(name)} (choices: {', '.join(choices)})"
        return SettingsError(self.path, [Problem(key, reason)])

    @property
    def forks(self) -> bool:
        """True when a worker group has ``spawn = "fork"``: then a preloader runs."""
        return any(group.spawn == "fork" for group in self.workers)

    @property
    def lock_timeout(self) -> float:
        """A lock older than this is stale: its worker's host must have died.

        The longest max_run_time of any group (so a group with a short limit never takes
        a job that a group with a long limit still runs), plus LOCK_MARGIN: a job past
        its max_run_time keeps its lock (refreshed by its worker) while the worker tries
        to stop it or retires, and must not look stale meanwhile.
        """
        return max(group.max_run_time for group in self.workers) + LOCK_MARGIN


# Seconds a lock outlives the longest max_run_time before another worker may take it.
LOCK_MARGIN = 30.0

# ---------------------------------------------------------------------- loading

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_INVALID: Any = object()  # a value that failed to parse; cross-checks skip it


def _join(prefix: str, key: str) -> str:
    # Quote keys that are not TOML bare keys so "databases.a.b" cannot be ambiguous.
    name = key if _BARE_KEY.fullmatch(key) else json.dumps(key, ensure_ascii=False)
    return f"{prefix}.{name}" if prefix else name


class _Reader:
    """Turns raw TOML data into option values, collecting problems on the way."""

    def __init__(self, base: Path, environ: Mapping[str, str]) -> None:
        self.base = base
        self.environ = environ
        self.problems: list[Problem] = []

    def problem(self, key: str, reason: str) -> None:
        self.problems.append(Problem(key, reason))

    def unknown(self, key: str, name: str, known: list[str]) -> None:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {describe(close[0])}?)" if close else ""
        self.problem(key, f"unknown key{hint}")

    def table(
        self,
        raw: Mapping[str, Any],
        section: str,
        prefix: str,
        context: _Context,
        extra: tuple[str, ...] = (),
    ) -> dict[str, Any]:
        options = options_in(section)
        known = [option.name for option in options]
        for name in raw:
            if name not in known and name not in extra:
                self.unknown(_join(prefix, name), name, known + list(extra))
        values: dict[str, Any] = {}
        for option in options:
            if option.name not in raw:
                values[option.name] = option.default_for(context)
                continue
            values[option.name] = self.value(option, raw[option.name], _join(prefix, option.name))
        return values

    def value(self, option: Option, value: Any, key: str) -> Any:
        try:
            if option.expand_env:
                value = _expand_deep(value, self.environ)
            return option.kind.parse(value, self.base)
        except ValueError as error:
            self.problem(key, str(error))
            return _INVALID

    def subtable(self, data: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
        raw = data.get(name)
        if raw is not None and not isinstance(raw, dict):
            self.problem(name, f"expected a table ([{name}]), got {toml_type(raw)}")
            return None
        return raw

    def databases(self, data: Mapping[str, Any], path: Path) -> list[Database]:
        if "databases" in data:
            raw = self.subtable(data, "databases")
            if raw is None:
                return []
            if not raw:
                self.problem("databases", "at least one database is required")
        else:
            raw = DEFAULT_DATABASES
        (option,) = options_in("databases")
        databases = []
        for name, value in raw.items():
            key = _join("databases", name)
            try:
                NAME.parse(name, self.base)
            except ValueError as error:
                self.problem(key, f"database name {error}")
            url = self.value(option, value, key)
            if url is not _INVALID:
                databases.append(Database(name, url, path))
        return databases

    def workers(self, data: Mapping[str, Any]) -> list[WorkerGroup]:
        raw = data.get("workers")
        if raw is None or raw == []:
            self.problem("workers", "at least one [[workers]] table is required")
            return []
        if not isinstance(raw, list):
            self.problem(
                "workers", f"expected an array of tables ([[workers]]), got {toml_type(raw)}"
            )
            return []
        groups: list[WorkerGroup] = []
        owners: dict[str, str] = {}
        for index, item in enumerate(raw):
            prefix = f"workers[{index}]"
            if not isinstance(item, dict):
                self.problem(prefix, f"expected a table, got {toml_type(item)}")
                continue
            values = self.table(item, "workers", prefix, _Context(self.base, index))
            self.check_group(prefix, values)
            name = values["name"]
            if name in owners:
                self.problem(
                    f"{prefix}.name",
                    f"duplicate name {describe(name)} (already used by {owners[name]})",
                )
            elif name is not _INVALID:
                owners[name] = prefix
            if _INVALID not in values.values():
                groups.append(WorkerGroup(index=index, **values))
        return groups

    def check_group(self, prefix: str, values: dict[str, Any]) -> None:
        soft, hard = values["max_memory"], values["hard_max_memory"]
        if isinstance(soft, int) and isinstance(hard, int) and hard <= soft:
            self.problem(
                f"{prefix}.hard_max_memory",
                f"must be greater than max_memory ({format_size(soft)})",
            )
        low, high = values["min_priority"], values["max_priority"]
        if isinstance(low, int) and isinstance(high, int) and low > high:
            self.problem(f"{prefix}.min_priority", f"{low} is greater than max_priority ({high})")

    def recurring(self, data: Mapping[str, Any], databases: list[Database]) -> list[RecurringJob]:
        raw = data.get("recurring")
        if raw is None:
            return []
        if not isinstance(raw, list):
            self.problem(
                "recurring", f"expected an array of tables ([[recurring]]), got {toml_type(raw)}"
            )
            return []
        names = [database.name for database in databases]
        entries: list[RecurringJob] = []
        owners: dict[str, str] = {}
        for index, item in enumerate(raw):
            prefix = f"recurring[{index}]"
            if not isinstance(item, dict):
                self.problem(prefix, f"expected a table, got {toml_type(item)}")
                continue
            values = self.table(item, "recurring", prefix, _Context(self.base, index))
            for required in ("name", "callable"):
                if values[required] is None:
                    self.problem(f"{prefix}.{required}", "required")
            cron, every = values["cron"], values["every"]
            if _INVALID in (cron, every):
                pass  # already reported
            elif cron is None and every is None:
                self.problem(prefix, "give cron or every")
            elif cron is not None and every is not None:
                self.problem(f"{prefix}.every", "give cron or every, not both")
            database = values["database"]
            if database is None and names:
                values["database"] = names[0]
            elif database not in (None, _INVALID) and names and database not in names:
                reason = f"no database named {describe(database)} (choices: {', '.join(names)})"
                self.problem(f"{prefix}.database", reason)
                values["database"] = _INVALID
            name = values["name"]
            if name in owners:
                self.problem(
                    f"{prefix}.name",
                    f"duplicate name {describe(name)} (already used by {owners[name]})",
                )
            elif name not in (None, _INVALID):
                owners[name] = prefix
            if _INVALID in values.values() or any(
                problem.key == prefix or problem.key.startswith(prefix + ".")
                for problem in self.problems
            ):
                continue
            try:
                entries.append(RecurringJob(**values))
            except ValueError as error:  # checked above; a last line of defence
                self.problem(prefix, str(error))
        return entries

    def metrics(self, data: Mapping[str, Any], context: _Context) -> MetricsSettings | None:
        raw = self.subtable(data, "metrics")
        if raw is None:
            return None
        values = self.table(raw, "metrics", "metrics", context)
        if "port" not in raw:
            self.problem("metrics.port", "required when [metrics] is present")
            return None
        if _INVALID in values.values():
            return None
        return MetricsSettings(**values)

    def check_circus(self, values: dict[str, Any]) -> None:
        # circusd cannot bind two sockets to one address; say so before it fails.
        seen: dict[str, str] = {}
        for name in ("endpoint", "pubsub_endpoint", "stats_endpoint"):
            endpoint = values[name]
            if endpoint in seen:
                self.problem(f"circus.{name}", f"same as circus.{seen[endpoint]}")
            elif endpoint is not _INVALID:
                seen[endpoint] = name


def parse_settings(
    data: Mapping[str, Any], path: Path, environ: Mapping[str, str] | None = None
) -> Settings:
    """Validate already decoded TOML ``data`` as if read from ``path``."""
    path = Path(os.path.abspath(path))
    reader = _Reader(path.parent, os.environ if environ is None else environ)
    context = _Context(path.parent)
    sections = tuple(section.name for section in SECTIONS if section.name)
    top = reader.table(data, "", "", context, extra=sections)
    callbacks = reader.table(
        reader.subtable(data, "callbacks") or {}, "callbacks", "callbacks", context
    )
    databases = reader.databases(data, path)
    workers = reader.workers(data)
    circus = reader.table(reader.subtable(data, "circus") or {}, "circus", "circus", context)
    reader.check_circus(circus)
    recurring = reader.recurring(data, databases)
    metrics = reader.metrics(data, context)
    if reader.problems:
        raise SettingsError(path, reader.problems)
    return Settings(
        path=path,
        callbacks=types.MappingProxyType(
            {name: value for name, value in callbacks.items() if value is not None}
        ),
        databases=tuple(databases),
        workers=tuple(workers),
        circus=CircusSettings(**circus),
        recurring=tuple(recurring),
        metrics=metrics,
        **top,
    )


_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


def load_settings(path: str | os.PathLike[str]) -> Settings:
    """Read, validate and return the settings file at ``path``."""
    path = Path(os.path.abspath(Path(path).expanduser()))
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise SettingsError(path, [Problem("", "no such file")]) from None
    except UnicodeDecodeError as error:
        reason = f"not UTF-8 text (byte {error.start})"
        raise SettingsError(path, [Problem("", reason)]) from None
    except OSError as error:
        raise SettingsError(path, [Problem("", error.strerror or str(error))]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        # tomllib and tomli end every message with "(at line L, column C)".
        message = str(error).splitlines()[0]
        match = _TOML_POSITION.search(message)
        reason = f"TOML syntax error: {message}"
        if match:
            where = f"line {match.group(1)}, column {match.group(2)}"
            reason = f"TOML syntax error at {where}: {message[: match.start()]}"
        raise SettingsError(path, [Problem("", reason)]) from None
    return parse_settings(data, path)
