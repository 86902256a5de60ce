"""A non-editable install (the wheel) carries the templates and SQL, and works."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the project's wheel installed (not editable); its python.

    The dependencies come from this test run's environment through a plain path entry,
    which (unlike a site dir) does not run that environment's editable-install hook.
    """
    wheels = tmp_path_factory.mktemp("wheel")
    pip = [sys.executable, "-m", "pip", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "-w", str(wheels), str(REPO_ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("circus_djmaster-*.whl")
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "-q", "install", "--no-deps", str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    (site / "test-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    circusd = venv / "bin" / "circusd"  # the dependency's script, for this interpreter
    circusd.write_text(f"#!{python}\nfrom circus.circusd import main\nmain()\n")
    circusd.chmod(0o755)
    return python


@pytest.fixture
def demo_folder() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="djmaster-wheel-test-"))
    try:
        yield folder / "demo"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run_installed(
    python: Path, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # Not from the repository's folder: `python -c`/`-m` put the current folder first.
    return subprocess.run(
        [str(python), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=python.parents[2],
    )


def test_the_wheel_holds_the_templates_and_the_sql(installed: Path) -> None:
    where = run_installed(
        installed, "-c", "import circus_djmaster; print(circus_djmaster.__file__)"
    )
    package = Path(where.stdout.strip()).parent
    assert package.parent.name == "site-packages", where.stdout + where.stderr
    assert (package / "config" / "templates" / "circus.ini.j2").is_file()
    assert not (package / "config" / "templates").is_symlink()
    assert (package / "store" / "sql" / "schema.sql").is_file()
    assert (package / "store" / "sql" / "queries.sql").is_file()
    assert (package / "py.typed").is_file()
    django_app = package / "contrib" / "django"
    assert (django_app / "migrations" / "0001_initial.py").is_file()
    assert (django_app / "management" / "commands" / "djmaster.py").is_file()


def test_init_and_demo_run_from_the_installed_wheel(installed: Path, demo_folder: Path) -> None:
    target = demo_folder.parent / "init"
    djmaster_config = installed.with_name("djmaster-config")  # the console script
    init = subprocess.run(
        [str(djmaster_config), "init", str(target)], capture_output=True, text=True, timeout=60
    )
    assert init.returncode == 0, init.stderr
    assert "[watcher:djmaster-default-primary]" in (target / "circus.ini").read_text()
    demo = run_installed(installed, "-m", "circus_djmaster", "demo", "--folder", str(demo_folder))
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "done: 301 jobs" in demo.stdout


TYPED_USE = """\
from circus_djmaster import job


@job
def send(user_id: int, subject: str = "") -> None: ...


@job(queue="mail")
def count(word: str) -> int:
    return len(word)


send.delay(1, subject="hello")
send.enqueue([1], delay=5, priority=-1, queue="mail")
reveal_type(count)
reveal_type(count("a"))
send.delay("one")  # line 17
count.call(2)  # line 18
send.enqueue([1], dely=5)  # line 19
send.delay(1, subject=2)  # line 20
"""


def test_type_checkers_see_the_jobs_signatures(installed: Path, tmp_path: Path) -> None:
    """The wheel ships py.typed, and @job keeps the function's signature for mypy."""
    (tmp_path / "use.py").write_text(TYPED_USE)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--no-incremental",
            "--cache-dir=/dev/null",
            "--python-executable",
            str(installed),
            "use.py",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = result.stdout
    assert "missing library stubs or py.typed marker" not in out, out
    assert 'Revealed type is "circus_djmaster.api.jobs.Job[[word: str], int]"' in out, out
    assert 'use.py:16: note: Revealed type is "int"' in out, out
    errors = sorted(line.split(":")[1] for line in out.splitlines() if ": error:" in line)
    assert errors == ["17", "18", "19", "20"], out
    assert 'Argument 1 to "delay" of "Job" has incompatible type "str"; expected "int"' in out
    assert 'Unexpected keyword argument "dely" for "enqueue" of "Job"' in out
