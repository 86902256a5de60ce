"""The CLIs' one table of exit codes is the one the docs show."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from circus_djmaster.contracts.exit_codes import CliExit

REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("document", ["README.md", "docs/operations.md"])
def test_the_documented_table_has_every_code(document: str) -> None:
    text = (REPO_ROOT / document).read_text(encoding="utf-8")
    table = text[text.index("| code | meaning |") :].split("\n\n")[0]
    codes = [int(code) for code in re.findall(r"^\| (\d+) \|", table, re.MULTILINE)]
    assert codes == sorted(int(code) for code in CliExit)
