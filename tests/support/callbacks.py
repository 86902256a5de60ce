"""Worker callbacks for tests: each appends its name to the file $DJMASTER_TEST_CALLBACK_LOG."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any


def _note(name: str) -> None:
    with open(os.environ["DJMASTER_TEST_CALLBACK_LOG"], "a", encoding="utf-8") as log:
        log.write(name + "\n")


def after_fork(worker: Any) -> None:
    _note(f"after_fork {worker.group.name} {worker.database.name}")


def before_work(worker: Any) -> None:
    _note("before_work")


def after_work(worker: Any) -> None:
    _note("after_work")


def around_work(worker: Any, block: Callable[[], None]) -> None:
    _note("around_work begin")
    block()
    _note("around_work end")


def broken(worker: Any) -> None:
    raise RuntimeError("this callback is broken")
