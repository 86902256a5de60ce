"""The handler format: encoding, decoding, resolving, and every bad input's error text."""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from circus_djmaster.api.handler import Handler, callable_path, decode, encode, resolve
from circus_djmaster.exceptions import HandlerError
from tests.support import jobs as support_jobs

# --------------------------------------------------------------------------- encode


def test_encode_writes_callable_args_and_kwargs() -> None:
    text = encode("tests.support.jobs:record", ("k",), {"x": 1})
    assert json.loads(text) == {
        "callable": "tests.support.jobs:record",
        "args": ["k"],
        "kwargs": {"x": 1},
    }


def test_encode_defaults_to_no_arguments() -> None:
    assert json.loads(encode("m:f")) == {"callable": "m:f", "args": [], "kwargs": {}}


def test_encode_keeps_non_ascii_text_readable() -> None:
    assert "héllo ✓" in encode("m:f", ["héllo ✓"])


def test_encode_then_decode_round_trips() -> None:
    text = encode("pkg.mod:Cls.method", [1, "two", None, [3.5]], {"flag": True, "n": {"a": 1}})
    assert decode(text) == Handler(
        "pkg.mod:Cls.method", (1, "two", None, [3.5]), {"flag": True, "n": {"a": 1}}
    )


def test_encode_refuses_arguments_that_are_not_json() -> None:
    with pytest.raises(HandlerError, match=r"arguments of m:f are not JSON-serialisable: .*set"):
        encode("m:f", [{1, 2}])


def test_encode_refuses_keyword_arguments_that_are_not_json() -> None:
    with pytest.raises(HandlerError, match="arguments of m:f are not JSON-serialisable"):
        encode("m:f", [], {"when": object()})


def test_encode_refuses_nan() -> None:
    with pytest.raises(HandlerError, match="arguments of m:f are not JSON-serialisable"):
        encode("m:f", [float("nan")])


@pytest.mark.parametrize("path", ["no_colon", ":f", "m:", ""])
def test_encode_refuses_an_ill_formed_path(path: str) -> None:
    with pytest.raises(HandlerError) as info:
        encode(path)
    assert str(info.value) == f'"callable" must look like "module.path:function", got {path!r}'


# --------------------------------------------------------------------------- decode


def test_decode_reads_a_full_handler() -> None:
    decoded = decode('{"callable": "a.b:c", "args": [1, 2], "kwargs": {"k": "v"}}')
    assert decoded == Handler("a.b:c", (1, 2), {"k": "v"})


def test_decode_defaults_missing_args_and_kwargs() -> None:
    assert decode('{"callable": "a:b"}') == Handler("a:b", (), {})


def test_decode_of_undecodable_json_says_so() -> None:
    with pytest.raises(HandlerError, match=r"^handler is not valid JSON: Expecting value"):
        decode("--- !ruby/object:Delayed::PerformableMethod")


def test_decode_of_empty_text_says_it_is_not_json() -> None:
    with pytest.raises(HandlerError, match=r"^handler is not valid JSON"):
        decode("")


@pytest.mark.parametrize(
    ("text", "kind"), [("[1, 2]", "list"), ('"a:b"', "str"), ("3", "int"), ("null", "NoneType")]
)
def test_decode_of_something_else_than_an_object_names_its_type(text: str, kind: str) -> None:
    with pytest.raises(HandlerError) as info:
        decode(text)
    assert str(info.value) == f"handler must be a JSON object, got {kind}"


def test_decode_names_unknown_keys_sorted() -> None:
    with pytest.raises(HandlerError) as info:
        decode('{"callable": "a:b", "zeta": 1, "object": "x"}')
    assert str(info.value) == "handler has unknown keys: object, zeta"


@pytest.mark.parametrize("text", ['{"args": []}', '{"callable": 3}', '{"callable": null}'])
def test_decode_needs_a_callable_string(text: str) -> None:
    with pytest.raises(HandlerError) as info:
        decode(text)
    assert str(info.value) == 'handler needs "callable": "module.path:function"'


@pytest.mark.parametrize("path", ["no_colon", ":func", "module:", ":", "a.b"])
def test_decode_refuses_an_ill_formed_callable(path: str) -> None:
    with pytest.raises(HandlerError) as info:
        decode(json.dumps({"callable": path}))
    assert str(info.value) == f'"callable" must look like "module.path:function", got {path!r}'


@pytest.mark.parametrize(("args", "kind"), [({"a": 1}, "dict"), ("abc", "str"), (1, "int")])
def test_decode_refuses_args_that_are_not_a_list(args: Any, kind: str) -> None:
    with pytest.raises(HandlerError) as info:
        decode(json.dumps({"callable": "a:b", "args": args}))
    assert str(info.value) == f'handler "args" must be a list, got {kind}'


@pytest.mark.parametrize(("kwargs", "kind"), [([1], "list"), ("x", "str"), (None, "NoneType")])
def test_decode_refuses_kwargs_that_are_not_an_object(kwargs: Any, kind: str) -> None:
    with pytest.raises(HandlerError) as info:
        decode(json.dumps({"callable": "a:b", "kwargs": kwargs}))
    assert str(info.value) == f'handler "kwargs" must be an object, got {kind}'


# -------------------------------------------------------------------------- resolve


def test_resolve_returns_the_named_function() -> None:
    assert resolve("tests.support.jobs:record") is support_jobs.record


def test_resolve_returns_a_decorated_job() -> None:
    assert resolve("tests.support.jobs:hooked") is support_jobs.hooked


def test_resolve_follows_dotted_attributes() -> None:
    assert resolve("os.path:join") is __import__("os").path.join
    assert resolve("pathlib:Path.cwd") == Path.cwd


def test_resolve_of_a_missing_module_names_it() -> None:
    with pytest.raises(HandlerError) as info:
        resolve("tests.support.no_such_module:f")
    assert str(info.value) == (
        "cannot import module 'tests.support.no_such_module' of tests.support.no_such_module:f"
    )


def test_resolve_of_a_missing_top_level_package_names_the_module() -> None:
    with pytest.raises(HandlerError, match=r"^cannot import module 'djm_absent_pkg\.sub' of "):
        resolve("djm_absent_pkg.sub:f")


def test_resolve_of_a_missing_attribute_names_it() -> None:
    with pytest.raises(HandlerError) as info:
        resolve("tests.support.jobs:no_such_function")
    assert str(info.value) == (
        "tests.support.jobs:no_such_function: 'tests.support.jobs' has no attribute "
        "'no_such_function'"
    )


def test_resolve_of_a_missing_nested_attribute_names_the_whole_path() -> None:
    with pytest.raises(HandlerError, match=r"has no attribute 'record\.nope'"):
        resolve("tests.support.jobs:record.nope")


def test_resolve_of_a_non_callable_says_what_it_is() -> None:
    with pytest.raises(HandlerError) as info:
        resolve("tests.support.jobs:not_callable")
    assert str(info.value) == "tests.support.jobs:not_callable is not callable (it is a int)"


def test_resolve_refuses_an_ill_formed_path() -> None:
    with pytest.raises(HandlerError, match=r'"callable" must look like "module\.path:function"'):
        resolve("tests.support.jobs.record")


def _module_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, source: str) -> None:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source), "utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)


def test_resolve_of_a_module_that_raises_on_import_gives_the_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _module_in(
        tmp_path,
        monkeypatch,
        "djm_raises_on_import",
        """
        raise RuntimeError("database is not configured")

        def f():
            pass
    """,
    )
    with pytest.raises(HandlerError) as info:
        resolve("djm_raises_on_import:f")
    assert str(info.value) == (
        "importing 'djm_raises_on_import' failed: RuntimeError('database is not configured')"
    )


def test_resolve_of_a_module_with_a_syntax_error_gives_the_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _module_in(tmp_path, monkeypatch, "djm_bad_syntax", "def f(:\n    pass\n")
    with pytest.raises(HandlerError, match=r"^importing 'djm_bad_syntax' failed: SyntaxError"):
        resolve("djm_bad_syntax:f")


def test_resolve_of_a_module_whose_own_import_is_missing_blames_that_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _module_in(tmp_path, monkeypatch, "djm_needs_dep", "import djm_missing_dependency\n")
    with pytest.raises(HandlerError) as info:
        resolve("djm_needs_dep:f")
    assert str(info.value).startswith("importing 'djm_needs_dep' failed: ModuleNotFoundError")
    assert "djm_missing_dependency" in str(info.value)


def test_resolve_blames_a_missing_dependency_whose_name_prefixes_the_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # djm_lib_ext exists; the package it imports, djm_lib, does not. The module was found,
    # so the message must name the failed import, not claim the module is missing.
    _module_in(tmp_path, monkeypatch, "djm_lib_ext", "import djm_lib\n")
    with pytest.raises(HandlerError) as info:
        resolve("djm_lib_ext:f")
    assert str(info.value).startswith("importing 'djm_lib_ext' failed: ModuleNotFoundError")
    assert "No module named 'djm_lib'" in str(info.value)


# -------------------------------------------------------------------- callable_path


def module_level_function() -> None:
    pass


class Holder:
    @staticmethod
    def static() -> None:
        pass


def test_callable_path_of_a_module_level_function() -> None:
    assert callable_path(module_level_function) == f"{__name__}:module_level_function"


def test_callable_path_of_a_nested_attribute_resolves_back() -> None:
    path = callable_path(Holder.static)
    assert path == f"{__name__}:Holder.static"
    assert resolve(path) is Holder.static


def test_callable_path_of_a_job_is_its_functions_path() -> None:
    assert callable_path(support_jobs.hooked) == "tests.support.jobs:hooked"


def test_callable_path_refuses_a_lambda() -> None:
    with pytest.raises(HandlerError, match="is not a module-level function: a worker cannot"):
        callable_path(lambda: None)


def test_callable_path_refuses_a_local_function() -> None:
    def local() -> None:
        pass

    with pytest.raises(HandlerError) as info:
        callable_path(local)
    assert str(info.value) == (
        f"{local!r} is not a module-level function: a worker cannot import it"
    )


def test_callable_path_refuses_a_function_of_main() -> None:
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec("def main_function():\n    pass\n", namespace)
    func: Callable[[], None] = namespace["main_function"]
    assert func.__module__ == "__main__"
    with pytest.raises(HandlerError) as info:
        callable_path(func)
    assert str(info.value) == (
        "main_function is defined in __main__: a worker cannot import it; move it to a module"
    )


def test_callable_path_refuses_an_object_without_a_qualname() -> None:
    import functools

    with pytest.raises(HandlerError, match="is not a module-level function"):
        callable_path(functools.partial(module_level_function))


def test_resolve_of_a_module_that_calls_sys_exit_on_import_is_a_handler_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _module_in(tmp_path, monkeypatch, "djm_exits_on_import", "import sys\nsys.exit(4)\n")
    with pytest.raises(HandlerError, match=r"importing 'djm_exits_on_import' failed: SystemExit"):
        resolve("djm_exits_on_import:f")


def test_decode_of_absurdly_nested_json_is_a_handler_error() -> None:
    with pytest.raises(HandlerError, match="handler is not valid JSON"):
        decode("[" * 100_000)
