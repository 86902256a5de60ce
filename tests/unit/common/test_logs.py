"""Log lines as text or JSON (common/logs.py)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from circus_djmaster.common import logs
from circus_djmaster.common.logs import JsonFormatter, event


@pytest.fixture
def root_handlers() -> Iterator[None]:
    """configure() replaces the root logger's handlers: put pytest's back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    logger = logging.getLogger("circus_djmaster.worker")
    return logger.makeRecord(
        logger.name, logging.INFO, __file__, 1, message, args, None, None, extra
    )


def test_a_json_line_has_the_standard_keys_the_context_and_the_event_fields() -> None:
    formatter = JsonFormatter({"role": "worker", "watcher": "djmaster-mail-primary", "wid": 2})
    line = formatter.format(
        record(
            "job %s succeeded",
            7,
            **event("job_succeeded", job_id=7, queue="mail", duration=0.25, outcome="SUCCEEDED"),
        )
    )
    assert "\n" not in line
    data = json.loads(line)
    assert data["message"] == "job 7 succeeded"
    assert (data["level"], data["logger"]) == ("INFO", "circus_djmaster.worker")
    assert isinstance(data["pid"], int)
    assert dt.datetime.fromisoformat(data["time"]).tzinfo is not None  # with its UTC offset
    assert (data["role"], data["watcher"], data["wid"]) == ("worker", "djmaster-mail-primary", 2)
    assert (data["event"], data["job_id"], data["queue"]) == ("job_succeeded", 7, "mail")
    assert (data["duration"], data["outcome"]) == (0.25, "SUCCEEDED")
    # Nothing of LogRecord's own bookkeeping leaks in.
    assert not {"args", "msg", "levelno", "pathname", "exc_info"} & set(data)


def test_a_json_line_carries_the_traceback_and_values_json_cannot_hold() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        logger = logging.getLogger("x")
        item = logger.makeRecord(
            "x",
            logging.ERROR,
            __file__,
            1,
            "failed",
            (),
            sys.exc_info(),
            None,
            {"path": Path("/a")},
        )
    data = json.loads(JsonFormatter().format(item))
    assert "ValueError: boom" in data["traceback"]
    assert data["path"] == "/a"


def test_configure_writes_json_lines_to_the_log_file(tmp_path: Path, root_handlers: None) -> None:
    log_file = tmp_path / "log" / "djmaster.log"
    logs.configure(log_file, "info", log_format="json", context={"role": "master"})
    logging.getLogger("circus_djmaster.master").info("hello %s", "there", extra=event("greeted"))
    logging.getLogger("circus_djmaster.master").debug("not at info")
    (line,) = log_file.read_text(encoding="utf-8").splitlines()
    data = json.loads(line)
    assert (data["message"], data["role"], data["event"]) == ("hello there", "master", "greeted")


def test_configure_writes_text_with_the_prefix_by_default(
    tmp_path: Path, root_handlers: None
) -> None:
    log_file = tmp_path / "djmaster.log"
    logs.configure(log_file, "info", prefix="worker[0]#2@primary ")
    logging.getLogger("circus_djmaster.worker").info("started")
    (line,) = log_file.read_text(encoding="utf-8").splitlines()
    assert line.endswith("INFO worker[0]#2@primary circus_djmaster.worker: started")
