"""Logging for the worker and the master: one file (or stderr), reopened on USR1, as
text or as JSON lines.

Log lines carry the pid; messages never contain a database URL (only database names).
Lines that say something happened also carry it as data (:func:`event`: the record's
``event`` attribute and its fields), for tests and for structured handlers; with
``log_format = "json"`` every line is one JSON object holding those fields
(:class:`JsonFormatter`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from collections.abc import Mapping
from pathlib import Path

__all__ = ["FORMAT", "JsonFormatter", "ReopenableFileHandler", "configure", "event", "reopen"]

FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"

#: Attributes every LogRecord has: what is not among them came from ``extra=``.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class ReopenableFileHandler(logging.FileHandler):
    """A FileHandler that can reopen its file after logrotate moved it away."""

    def reopen(self) -> None:
        self.acquire()
        try:
            if self.stream is not None:
                self.stream.close()
            self.stream = self._open()
        finally:
            self.release()


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line, for log collectors.

    Keys: ``time`` (ISO 8601 with the UTC offset, milliseconds), ``level``, ``logger``,
    ``pid``, ``message``; then the process' ``context`` (``role``, and for a worker
    ``watcher``, ``group``, ``database``, ``wid``); then the record's own fields (what
    :func:`event` put into ``extra=``: ``event``, ``job_id``, ``queue``, ``callable``,
    ``attempt``, ``duration`` in seconds, ``outcome``…); ``traceback`` when the record
    has one. Values JSON cannot hold are written as their ``str()``.
    """

    def __init__(self, context: Mapping[str, object] | None = None) -> None:
        super().__init__()
        self.context = dict(context or {})

    def format(self, record: logging.LogRecord) -> str:
        when = dt.datetime.fromtimestamp(record.created).astimezone()
        data: dict[str, object] = {
            "time": when.isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
            **self.context,
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES:
                data[key] = value
        if record.exc_info:
            data["traceback"] = self.formatException(record.exc_info)
        elif record.stack_info:
            data["traceback"] = self.formatStack(record.stack_info)
        return json.dumps(data, default=str, ensure_ascii=False)


def event(name: str, **fields: object) -> dict[str, object]:
    """``extra=`` of a log call saying that ``name`` happened, with its ``fields``
    (attributes of the log record; they must not be named like LogRecord's own)."""
    return {"event": name, **fields}


def configure(
    log_file: Path | None,
    level: str,
    *,
    prefix: str = "",
    log_format: str = "text",
    context: Mapping[str, object] | None = None,
) -> None:
    """Send the root logger to ``log_file`` (appended) or stderr, at ``level``.

    ``log_format`` is ``"text"`` (``FORMAT``, the logger name after ``prefix``) or
    ``"json"`` (:class:`JsonFormatter` with ``context``).
    """
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    handler: logging.Handler
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = ReopenableFileHandler(log_file, encoding="utf-8", delay=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(context))
    else:
        fmt = FORMAT.replace("%(name)s", f"{prefix}%(name)s") if prefix else FORMAT
        handler.setFormatter(logging.Formatter(fmt))
    root.addHandler(handler)
    root.setLevel(level.upper())


def reopen() -> None:
    """Reopen every log file of the root logger (USR1)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, ReopenableFileHandler):
            handler.reopen()
