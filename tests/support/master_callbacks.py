"""Master callbacks for tests: each appends a line to the file $DJMASTER_TEST_CALLBACK_LOG."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any


def _note(text: str) -> None:
    with open(os.environ["DJMASTER_TEST_CALLBACK_LOG"], "a", encoding="utf-8") as log:
        log.write(text + "\n")


def before_fork(master: Any, target: Any) -> None:
    _note(f"before_fork {target.watcher} {target.count} {target.group.name} {target.database}")


def before_polling(master: Any, database: str) -> None:
    _note(f"before_polling {database}")


def around_polling(master: Any, database: str, block: Callable[[], None]) -> None:
    _note(f"around_polling {database}")
    block()
    raise RuntimeError("around_polling breaks after its block")


def after_monitor(master: Any) -> None:
    raise RuntimeError("after_monitor is broken")
