"""docs/settings.md is generated from the declarations and kept current."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from circus_djmaster.config import docs
from circus_djmaster.config.options import OPTIONS, SECTIONS
from circus_djmaster.config.settings import load_settings

DOCS = Path(__file__).resolve().parents[3] / "docs" / "settings.md"


def test_checked_in_docs_are_current() -> None:
    assert DOCS.read_text(encoding="utf-8") == docs.render(), (
        "docs/settings.md is stale: run python -m circus_djmaster.config.docs"
    )
    assert docs.main(["--check", "--output", str(DOCS)]) == 0


def test_docs_cover_every_section_and_option() -> None:
    text = docs.render()
    for section in SECTIONS[1:]:
        assert f"## `{section.header}`" in text
    for option in OPTIONS:
        assert f"| `{option.name}` | {option.type} |" in text.replace("\\|", "|")


def test_main_writes_and_check_detects_stale_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "docs" / "settings.md"
    assert docs.main(["--check", "--output", str(output)]) == 1  # missing
    assert docs.main(["--output", str(output)]) == 0
    assert output.read_text(encoding="utf-8") == docs.render()
    assert docs.main(["--check", "--output", str(output)]) == 0
    output.write_text("old\n", encoding="utf-8")
    assert docs.main(["--check", "--output", str(output)]) == 1
    assert "is stale" in capsys.readouterr().err


def test_the_example_in_the_docs_is_a_valid_file(tmp_path: Path) -> None:
    path = tmp_path / "djmaster.toml"
    path.write_text(docs.EXAMPLE, encoding="utf-8")
    settings = load_settings(path)
    assert [group.name for group in settings.workers] == ["mail", "default"]
    assert docs.EXAMPLE in docs.render()


def test_the_readmes_fork_mode_example_is_valid_settings(tmp_path: Path) -> None:
    """README's ```toml block (Fork mode) is a worker group as written."""
    readme = (DOCS.parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Fork mode\n") :]
    block = re.findall(r"^```toml\n(.*?)^```$", section, flags=re.MULTILINE | re.DOTALL)[0]
    path = tmp_path / "djmaster.toml"
    path.write_text('[databases]\nprimary = "postgresql:///app"\n\n' + block, encoding="utf-8")
    settings = load_settings(path)
    (group,) = settings.workers
    assert (group.spawn, group.max_memory, settings.forks) == ("fork", 300 * 2**20, True)
