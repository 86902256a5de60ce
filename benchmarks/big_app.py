"""An application that holds about 200 MB of Python objects once imported (B3F memory):
caches, models, a loaded vocabulary. Its jobs are benchmarks.jobs'."""

from __future__ import annotations

import os

import benchmarks.jobs  # noqa: F401  (the jobs, and the preload record)

#: How many objects (``$BENCH_BIG_APP_OBJECTS``: fewer in the quick run).
COUNT = int(os.environ.get("BENCH_BIG_APP_OBJECTS", "550000"))
#: 550,000 small dicts, each with an int, a string and a tuple: about 380 bytes of
#: objects apiece, 200 MiB in all (the RSS the import adds, measured here).
OBJECTS = [{"id": i, "name": f"object-{i:08d}", "pair": (i, i + 1)} for i in range(COUNT)]
