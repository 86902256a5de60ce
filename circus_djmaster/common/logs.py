"""Logging for the worker and the master: one file (or stderr), reopened on USR1.

Log lines carry the pid; messages never contain a database URL (only database names).
Lines that say something happened also carry it as data (:func:`event`: the record's
``event`` attribute and its fields), for tests and for structured handlers.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"


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


def event(name: str, **fields: object) -> dict[str, object]:
    """``extra=`` of a log call saying that ``name`` happened, with its ``fields``
    (attributes of the log record; they must not be named like LogRecord's own)."""
    return {"event": name, **fields}


def configure(log_file: Path | None, level: str, *, prefix: str = "") -> None:
    """Send the root logger to ``log_file`` (appended) or stderr, at ``level``."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    handler: logging.Handler
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = ReopenableFileHandler(log_file, encoding="utf-8", delay=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
    fmt = FORMAT.replace("%(name)s", f"{prefix}%(name)s") if prefix else FORMAT
    handler.setFormatter(logging.Formatter(fmt))
    root.addHandler(handler)
    root.setLevel(level.upper())


def reopen() -> None:
    """Reopen every log file of the root logger (USR1)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, ReopenableFileHandler):
            handler.reopen()
