"""An application whose import takes one second (B3F): a large framework, models and
settings loaded at start. Its jobs are benchmarks.jobs'."""

from __future__ import annotations

import time

import benchmarks.jobs  # noqa: F401  (the jobs, and the preload record)

IMPORT_SECONDS = 1.0
time.sleep(IMPORT_SECONDS)
