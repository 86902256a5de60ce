"""Context around every job of a worker (what the Django preload registers)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from circus_djmaster.api import wrappers


@pytest.fixture(autouse=True)
def no_wrappers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wrappers, "_FACTORIES", [])


def add(a: int, b: int = 0) -> int:
    return a + b


def test_without_wrappers_the_function_is_itself() -> None:
    assert wrappers.wrap(add) is add


def test_every_job_runs_inside_the_registered_contexts_first_outermost() -> None:
    seen: list[str] = []

    def named(name: str) -> object:
        @contextmanager
        def around() -> Iterator[None]:
            seen.append(f"{name} in")
            try:
                yield
            finally:
                seen.append(f"{name} out")

        return around

    wrappers.around_every_job(named("outer"))  # type: ignore[arg-type]
    wrappers.around_every_job(named("inner"))  # type: ignore[arg-type]
    wrapped = wrappers.wrap(add)
    assert wrapped(2, b=3) == 5
    assert wrapped.__name__ == "add"
    assert seen == ["outer in", "inner in", "inner out", "outer out"]
    seen.clear()

    def boom() -> None:
        raise ValueError("the job's own error")

    with pytest.raises(ValueError, match="the job's own error"):
        wrappers.wrap(boom)()
    assert seen == ["outer in", "inner in", "inner out", "outer out"]  # exited all the same


def test_around_every_job_needs_a_callable() -> None:
    with pytest.raises(TypeError, match="needs a callable"):
        wrappers.around_every_job("not callable")  # type: ignore[arg-type]


def test_an_async_job_runs_inside_the_contexts_until_it_is_awaited() -> None:
    """The contexts close after the coroutine is done, not when it is created."""
    import asyncio

    seen: list[str] = []

    @contextmanager
    def around() -> Iterator[None]:
        seen.append("in")
        try:
            yield
        finally:
            seen.append("out")

    async def job(value: int) -> int:
        seen.append("running")
        await asyncio.sleep(0)
        return value

    wrappers.around_every_job(around)
    awaitable = wrappers.wrap(job)(7)
    assert seen == ["in"], "still open: the job has not run yet"
    assert asyncio.run(awaitable) == 7
    assert seen == ["in", "running", "out"]
