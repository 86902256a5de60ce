"""The procrastinate app of the benchmark workers.

They load it with ``--app=benchmarks.peers.procrastinate_app.app``; the connection string
comes from ``$DJBENCH_PROCRASTINATE_URL``. Tasks are ``async``: procrastinate runs ``def``
tasks in a thread pool, so an async no-op is its fastest path.
"""

from __future__ import annotations

import os

import procrastinate

from benchmarks import jobs

URL_ENV = "DJBENCH_PROCRASTINATE_URL"
QUEUE = "bench"

app = procrastinate.App(
    connector=procrastinate.PsycopgConnector(conninfo=os.environ.get(URL_ENV, "")),
)


@app.task(name="noop", queue=QUEUE)
async def noop() -> None:
    jobs.noop()


@app.task(name="record", queue=QUEUE)
async def record(key: str) -> None:
    jobs.record(key)
