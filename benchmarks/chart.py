"""results.png: B1 throughput (with the pgbench ceilings), B2 latency, B3 breakdown."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

from benchmarks.common import Section

COLORS = {"circus-djmaster": "#2b6cb0", "procrastinate": "#dd6b20", "pgqueuer": "#38a169"}


def write_chart(sections: Sequence[Section], path: Path) -> str | None:
    """Write the chart; None when done, else why not (matplotlib missing, no data)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]')"
    by_key = {section.key: section for section in sections}
    panels = [
        key
        for key in ("B1", "B2", "B3")
        if key in by_key and any(row.metrics for row in by_key[key].rows())
    ]
    if not panels:
        return "no data to chart"
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5.5), squeeze=False)
    for axis, key in zip(axes[0], panels, strict=True):
        {"B1": _b1, "B2": _b2, "B3": _b3}[key](axis, by_key)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def _median(values: list[float] | None) -> float:
    return statistics.median(values) if values else 0.0


def _b1(axis, by_key: dict[str, Section]) -> None:  # type: ignore[no-untyped-def]
    rows = [row for row in by_key["B1"].rows() if row.metrics.get("rate")]
    labels = [f"{row.system}\n{row.setting}" for row in rows]
    values = [_median(row.metrics["rate"]) for row in rows]
    colors = [COLORS.get(row.system, "grey") for row in rows]
    axis.barh(range(len(rows)), values, color=colors)
    steady = [
        (i, _median(row.metrics["steady"]))
        for i, row in enumerate(rows)
        if row.metrics.get("steady")
    ]
    if steady:
        axis.scatter(
            [v for _, v in steady],
            [i for i, _ in steady],
            marker="D",
            facecolors="none",
            edgecolors="black",
            label="steady jobs/s (first to last job)",
        )
    axis.set_yticks(range(len(rows)), labels, fontsize=7)
    axis.invert_yaxis()
    axis.set_xscale("log")
    axis.set_xlabel("jobs/s, wall time incl. start-up (bars) and steady (diamonds); log")
    axis.set_title("B1 drain throughput")
    if "B6" in by_key:
        for row, style in zip(by_key["B6"].rows(), ("--", ":"), strict=False):
            if row.metrics.get("tps"):
                axis.axvline(
                    _median(row.metrics["tps"]),
                    color="black",
                    linestyle=style,
                    label=f"pgbench {row.setting}",
                )
    axis.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=1)


def _b2(axis, by_key: dict[str, Section]) -> None:  # type: ignore[no-untyped-def]
    rows = [row for row in by_key["B2"].rows() if row.metrics.get("p50")]
    width = 0.25
    for i, p in enumerate(("p50", "p90", "p99")):
        axis.bar(
            [x + (i - 1) * width for x in range(len(rows))],
            [_median(row.metrics[p]) for row in rows],
            width,
            label=p,
        )
    axis.set_xticks(range(len(rows)), [row.system for row in rows])
    axis.set_ylabel("ms (median of runs)")
    axis.set_title("B2 warm pickup latency")
    axis.legend(fontsize=8)


def _b3(axis, by_key: dict[str, Section]) -> None:  # type: ignore[no-untyped-def]
    steps = [row for row in by_key["B3"].rows() if row.key.startswith("b3/step/")]
    # A step measured across the 10 ms process-creation clock can read slightly negative.
    values = [max(0.0, _median(row.metrics.get("p50"))) for row in steps]
    left = 0.0
    for row, value in zip(steps, values, strict=True):
        axis.barh(0, value, left=left, label=row.setting)
        left += value
    axis.set_yticks([])
    axis.set_xlabel("ms (p50 of each step)")
    axis.set_title("B3 scale from zero: where the time goes")
    axis.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)
