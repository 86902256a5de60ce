"""The scenarios B1-B6 of issue 6, B9 of issue 13 and B3F of issue 12; each module has
``run(ctx) -> Section``."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from benchmarks.common import Context, Section

MODULES = {
    "B1": ("b1_drain", "Drain throughput"),
    "B2": ("b2_pickup", "Warm pickup latency"),
    "B3": ("b3_scale_from_zero", "Scale-from-zero pickup"),
    "B3F": ("b3f_fork", "Fork mode: pickup and memory, side by side with exec"),
    "B4": ("b4_queries", "Query cost at scale"),
    "B5": ("b5_master", "Master overhead"),
    "B6": ("b6_pgbench", "The physical reference (pgbench)"),
    "B9": ("b9_enqueue", "Enqueue latency from a web app"),
}


def runner(key: str) -> Callable[[Context], Section]:
    module = importlib.import_module(f"benchmarks.scenarios.{MODULES[key][0]}")
    return module.run  # type: ignore[no-any-return]
