"""How ``python -m circus_djmaster worker`` reads its command line (worker/main.py)."""

from __future__ import annotations

import pytest

from circus_djmaster.worker.main import options_from


@pytest.mark.parametrize(
    "argv",
    [
        ["--settings", "/s.toml", "--group", "mail", "--database", "primary"],
        ["--database", "primary", "--settings", "/s.toml", "--group", "mail"],
        ["--settings=/s.toml", "--group=mail", "--database", "primary"],
    ],
)
def test_the_command_line_circus_ini_gives_is_read_without_argparse(argv: list[str]) -> None:
    assert options_from(argv) == ("/s.toml", "mail", "primary", None)


@pytest.mark.parametrize(
    "argv",
    [
        ["--settings", "/s.toml", "--group", "mail", "--database", "primary", "--wid", "3"],
        ["--wid=3", "--settings", "/s.toml", "--group", "mail", "--database", "primary"],
    ],
)
def test_circus_wid_is_read_too(argv: list[str]) -> None:
    assert options_from(argv) == ("/s.toml", "mail", "primary", 3)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--help"],
        ["--settings", "/s.toml", "--group", "mail"],  # one missing
        ["--settings", "/s.toml", "--group", "mail", "--database"],  # no value
        ["--settings", "-x", "--group", "mail", "--database", "primary"],
        ["--set", "/s.toml", "--group", "mail", "--database", "primary"],  # abbreviation
        ["--settings", "a", "--settings", "b", "--group", "g", "--database", "d"],
        ["--settings", "a", "--group", "g", "--database", "d", "extra"],
        ["--settings", "a", "--group", "g", "--database", "d", "--wid", "x"],  # not a number
        ["--settings", "a", "--group", "g", "--database", "d", "--wid", "$(circus.wid)"],
    ],
)
def test_anything_else_goes_to_the_clis_parser(argv: list[str]) -> None:
    assert options_from(argv) is None
