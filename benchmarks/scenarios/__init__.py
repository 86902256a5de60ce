"""The scenarios B1-B6 of issue 6, B3b, B7 and B8 of issue 11 and B9 of issue 13; each
module has ``run(ctx) -> Section``."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from benchmarks.common import Context, Section

MODULES = {
    "B1": ("b1_drain", "Drain throughput"),
    "B2": ("b2_pickup", "Warm pickup latency"),
    "B3": ("b3_scale_from_zero", "Scale-from-zero pickup"),
    "B3b": ("b3b_after_retire", "Scale from zero right after a retire"),
    "B4": ("b4_queries", "Query cost at scale"),
    "B5": ("b5_master", "Master overhead"),
    "B6": ("b6_pgbench", "The physical reference (pgbench)"),
    "B7": ("b7_master_scale", "Master overhead at 20 groups x 3 databases"),
    "B8": ("b8_fairness", "Fairness under auto read-ahead"),
    "B9": ("b9_enqueue", "Enqueue latency from a web app"),
}


def runner(key: str) -> Callable[[Context], Section]:
    module = importlib.import_module(f"benchmarks.scenarios.{MODULES[key][0]}")
    return module.run  # type: ignore[no-any-return]
