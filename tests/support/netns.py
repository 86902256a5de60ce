"""Hosts of their own for one test: Linux network and UTS namespaces (iproute2).

:func:`isolated_hosts` makes, for each name, a network namespace joined to this one
by a veth pair (``10.231.N.1`` here, ``10.231.N.2`` there); a circusd started with
:func:`start_circus_on` runs in it, in a UTS namespace of its own whose host name is
the given name, so its master and workers write ``locked_by = host:NAME pid:PID``.
The test process stays in the initial namespaces, where a database listens on the
``.1`` address of each pair (this namespace is the third host). It reaches each
circusd through ``ipc://`` endpoints (Unix sockets live in the file system, which the
namespaces share; circus endpoints must be loopback or ipc). Pids are shared (no pid
namespace): the test signals workers directly.

It needs root, ``ip`` and ``unshare``; :func:`unavailable` says why not otherwise, and
the tests then run both circusd here, on loopback, under one host name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .circus_run import CircusRun, circus_table, free_port, start_circus
from .pg_servers import EmbeddedServer

SUBNET_PREFIX = "10.231"


@dataclasses.dataclass(frozen=True)
class Host:
    name: str  # the host name its processes see ("" when not isolated: this machine's)
    namespace: str | None  # network namespace; None: this one (same host)
    address: str  # its own address (on its side of the veth pair)
    database_address: str  # where it reaches the database (this namespace's side)

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run in this host's namespaces, under its host name."""
        if self.namespace is None:
            return list(argv)
        return [
            "ip",
            "netns",
            "exec",
            self.namespace,
            "unshare",
            "--uts",
            "sh",
            "-c",
            'hostname "$0" && exec "$@"',
            self.name,
            *argv,
        ]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=30, check=False)


def unavailable() -> str | None:
    """Why isolated hosts cannot be made here, or None if they can."""
    if os.environ.get("DJMASTER_FAULTS_NETNS", "1") == "0":
        return "DJMASTER_FAULTS_NETNS=0"
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        return "not root on Linux"
    for tool in ("ip", "unshare", "sh"):
        if shutil.which(tool) is None:
            return f"no {tool} command"
    probe = f"djprobe{os.getpid() % 100000}"
    made = _run("ip", "netns", "add", probe)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    try:
        inner = _run("ip", "netns", "exec", probe, "unshare", "--uts", "hostname", "probe")
        if inner.returncode != 0:
            return f"unshare --uts failed: {inner.stderr.strip()}"
    finally:
        _run("ip", "netns", "del", probe)
    return None


def _free_subnets(count: int) -> list[str]:
    used = _run("ip", "-4", "addr").stdout + _run("ip", "-4", "route").stdout
    taken = {int(n) for n in re.findall(rf"{re.escape(SUBNET_PREFIX)}\.(\d+)\.", used)}
    start = os.getpid() % 200
    free = [n for n in (*range(start, 250), *range(start)) if n not in taken]
    if len(free) < count:
        raise RuntimeError(f"no free {SUBNET_PREFIX}.N.0/24 subnets")
    return [f"{SUBNET_PREFIX}.{n}" for n in free[:count]]


@contextlib.contextmanager
def isolated_hosts(names: Sequence[str]) -> Iterator[list[Host]]:
    """One namespace (network + UTS) per name, joined to this one by a veth pair."""
    tag = os.getpid() % 100000
    hosts: list[Host] = []
    links: list[str] = []
    namespaces: list[str] = []

    def check(*args: str) -> None:
        result = _run(*args)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: {result.stderr.strip()}")

    try:
        for index, (name, subnet) in enumerate(zip(names, _free_subnets(len(names)), strict=True)):
            namespace = f"dj{tag}h{index}"
            outside, inside = f"dj{tag}o{index}", f"dj{tag}i{index}"
            check("ip", "netns", "add", namespace)
            namespaces.append(namespace)
            check("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
            links.append(outside)
            check("ip", "link", "set", inside, "netns", namespace)
            check("ip", "addr", "add", f"{subnet}.1/24", "dev", outside)
            check("ip", "link", "set", outside, "up")
            check("ip", "-n", namespace, "addr", "add", f"{subnet}.2/24", "dev", inside)
            check("ip", "-n", namespace, "link", "set", inside, "up")
            check("ip", "-n", namespace, "link", "set", "lo", "up")
            hosts.append(Host(name, namespace, f"{subnet}.2", f"{subnet}.1"))
        yield hosts
    finally:
        for link in links:
            _run("ip", "link", "del", link)
        for namespace in namespaces:
            _run("ip", "netns", "del", namespace)


def same_host(count: int) -> list[Host]:
    """The fallback: every "host" is this machine, on loopback."""
    return [Host("", None, "127.0.0.1", "") for _ in range(count)]


def start_circus_on(host: Host, settings_path: Path, env: Mapping[str, str]) -> CircusRun:
    """circusd on ``settings_path``, in ``host``'s namespaces."""
    where = f" on {host.name}" if host.namespace is not None else ""
    return start_circus(settings_path, env, wrap=host.command, where=where)


@contextlib.contextmanager
def two_or_more_hosts(names: Sequence[str]) -> Iterator[list[Host]]:
    """Isolated hosts named ``names`` when network namespaces are available, else as
    many "hosts" on this machine (said on stdout)."""
    reason = unavailable()
    if reason is not None:
        print(f"{len(names)} hosts on one machine (no namespaces: {reason})")
        yield same_host(len(names))
        return
    with isolated_hosts(names) as made:
        yield made


def serve_hosts(server: EmbeddedServer, hosts: Sequence[Host], password: str) -> EmbeddedServer:
    """``server`` made reachable from isolated ``hosts`` over TCP with ``password``, like
    a database server (as it is on one machine)."""
    if hosts and hosts[0].namespace is not None:
        server.require_password(password)
        server.listen_on_tcp(free_port())
    return server


def host_url(server: EmbeddedServer, host: Host, dbname: str) -> str:
    """The URL of database ``dbname`` as ``host`` reaches it."""
    if host.namespace is None:
        return server.url(dbname)
    return server.url(dbname, host=host.database_address, port=server.port)


def host_circus_table(folder: Path, host: Host) -> dict[str, Any]:
    """A ``[circus]`` table for circusd on ``host``. An isolated host's loopback is its
    own, out of this process' reach: Unix sockets in the shared file system instead
    (circus endpoints are loopback or ipc only)."""
    circus = circus_table(folder)
    if host.namespace is not None:
        circus |= {
            name: f"ipc://{folder / name}.sock"
            for name in ("endpoint", "pubsub_endpoint", "stats_endpoint")
        }
    return circus
