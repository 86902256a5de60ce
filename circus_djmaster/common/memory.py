"""Memory of a process and its children, read with psutil: resident (RSS) and unique
(USS).

One rule for the worker (its own limits after each job), the master (memory limits of
every worker) and ``djmaster status``: a job may start processes, and their memory is
the worker's. A child that exits while it is read is left out, never the worker.

A worker forked from the preloader (``spawn = "fork"``) shares the application's pages
with it copy-on-write: its RSS counts them all (a 450 MB application gives each worker
an RSS of 450 MB while it owns 3 MB of its own: benchmarks/RESULTS.md, "Fork mode"), so
its limits compare its USS, the memory only it uses, which is what its exit frees and
what grows when it leaks. (PSS would charge each worker a share of the preloader's pages
that changes whenever a sibling starts or exits.)
"""

from __future__ import annotations

import contextlib

import psutil

__all__ = ["rss_with_children", "uss_with_children"]


def rss_with_children(process: psutil.Process) -> int:
    """RSS of ``process`` and of all its descendants, in bytes.

    Raises psutil's errors when ``process`` itself cannot be read (gone, a zombie, not
    ours); a descendant that cannot be read (it exited meanwhile) counts 0.
    """
    total = int(process.memory_info().rss)
    try:
        children = process.children(recursive=True)
    except psutil.Error:
        children = []
    for child in children:
        with contextlib.suppress(psutil.Error):  # the child exited meanwhile
            total += int(child.memory_info().rss)
    return total


def uss_with_children(process: psutil.Process) -> int:
    """USS (unique set size: pages no other process maps) of ``process`` and of all its
    descendants, in bytes; psutil reads ``/proc/PID/smaps_rollup`` (about 3 ms per
    200 MB mapped). Errors as for :func:`rss_with_children`."""
    total = int(process.memory_full_info().uss)
    try:
        children = process.children(recursive=True)
    except psutil.Error:
        children = []
    for child in children:
        with contextlib.suppress(psutil.Error):
            total += int(child.memory_full_info().uss)
    return total
