"""Callbacks named in the settings (``module:attr``): loaded once, called safely.

An exception raised by a callback is logged with its traceback and never stops the
caller (SPEC §5: a callback must not kill polling, monitoring or the worker loop).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from circus_djmaster.api.handler import resolve
from circus_djmaster.exceptions import HandlerError, PreloadError

log = logging.getLogger(__name__)


def resolve_callbacks(
    paths: Mapping[str, str], names: tuple[str, ...]
) -> tuple[dict[str, Callable[..., Any]], dict[str, HandlerError]]:
    """Import the callbacks among ``names`` that ``paths`` sets: (loaded, failures)."""
    functions: dict[str, Callable[..., Any]] = {}
    failures: dict[str, HandlerError] = {}
    for name in names:
        path = paths.get(name)
        if path is None:
            continue
        try:
            functions[name] = resolve(path)
        except HandlerError as exc:
            failures[name] = exc
    return functions, failures


class Callbacks:
    def __init__(self, functions: Mapping[str, Callable[..., Any]]) -> None:
        self._functions = dict(functions)

    @classmethod
    def load(cls, paths: Mapping[str, str], names: tuple[str, ...]) -> Callbacks:
        """The worker's callbacks; PreloadError if one cannot be imported (exit 78)."""
        functions, failures = resolve_callbacks(paths, names)
        for name, exc in failures.items():
            raise PreloadError(f"callbacks.{name}: {exc}") from exc
        return cls(functions)

    def call(self, name: str, *args: Any) -> None:
        function = self._functions.get(name)
        if function is None:
            return
        try:
            function(*args)
        except Exception:
            log.exception("callback %s raised; going on", name)

    def around(self, name: str, block: Callable[[], Any], *args: Any) -> None:
        """Run ``block`` through the ``around_*`` callback ``name`` (or directly).

        If the callback raises before it ran the block, the block runs anyway: a broken
        callback must not silently stop the work it wraps.
        """
        function = self._functions.get(name)
        if function is None:
            block()
            return
        ran = False

        def wrapped() -> None:
            nonlocal ran
            ran = True
            block()

        try:
            function(*args, wrapped)
        except Exception:
            log.exception("callback %s raised; going on", name)
        if not ran:
            block()
