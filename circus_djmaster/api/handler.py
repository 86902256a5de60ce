"""The handler format: JSON naming an importable callable and its arguments.

``{"callable": "module.path:function", "args": [...], "kwargs": {...}}``. Anything that
cannot be decoded or resolved raises :class:`HandlerError` with a message fit for
``last_error``; the worker then fails that job for good and goes on.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from circus_djmaster.exceptions import HandlerError


@dataclasses.dataclass(frozen=True)
class Handler:
    callable: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def callable_path(func: Callable[..., Any]) -> str:
    """``module:qualname`` of a module-level function (what the handler stores)."""
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", None)
    if not module or not qualname or "<locals>" in qualname or "<lambda>" in qualname:
        raise HandlerError(f"{func!r} is not a module-level function: a worker cannot import it")
    if module == "__main__":
        raise HandlerError(
            f"{qualname} is defined in __main__: a worker cannot import it; move it to a module"
        )
    return f"{module}:{qualname}"


def encode(path: str, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None) -> str:
    _check_path(path)
    try:
        return json.dumps(
            {"callable": path, "args": list(args), "kwargs": dict(kwargs or {})},
            ensure_ascii=False,
            allow_nan=False,
        )
    except (TypeError, ValueError) as exc:
        raise HandlerError(f"arguments of {path} are not JSON-serialisable: {exc}") from exc


def decode(text: str) -> Handler:
    try:
        data = json.loads(text)
    except (TypeError, ValueError, RecursionError) as exc:  # RecursionError: absurd nesting
        raise HandlerError(f"handler is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise HandlerError(f"handler must be a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - {"callable", "args", "kwargs"})
    if unknown:
        raise HandlerError(f"handler has unknown keys: {', '.join(unknown)}")
    path = data.get("callable")
    if not isinstance(path, str):
        raise HandlerError('handler needs "callable": "module.path:function"')
    _check_path(path)
    args = data.get("args", [])
    kwargs = data.get("kwargs", {})
    if not isinstance(args, list):
        raise HandlerError(f'handler "args" must be a list, got {type(args).__name__}')
    if not isinstance(kwargs, dict):
        raise HandlerError(f'handler "kwargs" must be an object, got {type(kwargs).__name__}')
    return Handler(path, tuple(args), kwargs)


def resolve(path: str) -> Callable[..., Any]:
    """Import ``module.path:attr.sub`` and return the callable it names."""
    _check_path(path)
    module_name, _, attr_path = path.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # The module itself (or a package on its path) is missing, not one of its imports.
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise HandlerError(f"cannot import module {module_name!r} of {path}") from None
        raise HandlerError(f"importing {module_name!r} failed: {exc!r}") from exc
    except (Exception, SystemExit) as exc:
        # A module may even call sys.exit() when imported: that is its job's failure,
        # never the worker's (SystemExit would end the job thread silently).
        raise HandlerError(f"importing {module_name!r} failed: {exc!r}") from exc
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise HandlerError(f"{path}: {module_name!r} has no attribute {attr_path!r}") from None
    if not callable(target):
        raise HandlerError(f"{path} is not callable (it is a {type(target).__name__})")
    resolved: Callable[..., Any] = target
    return resolved


def _check_path(path: str) -> None:
    module_name, sep, attr_path = path.partition(":")
    if not sep or not module_name or not attr_path:
        raise HandlerError(f'"callable" must look like "module.path:function", got {path!r}')


def resolve_callbacks(
    paths: Mapping[str, str], names: tuple[str, ...]
) -> tuple[dict[str, Callable[..., Any]], dict[str, HandlerError]]:
    """Import the settings callbacks among ``names`` that ``paths`` sets (``module:attr``
    each, as handlers name callables): ``(loaded, failures)``."""
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
