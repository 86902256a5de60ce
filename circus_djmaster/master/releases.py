"""Who pays for a worker's death: the release of a dead worker's jobs.

A worker that dies (SIGKILL, the OOM killer, ``os._exit`` in a job, ``hard_max_memory``)
leaves its jobs locked. The master releases them at once (:class:`Release`, run by the
database's poller) and charges them from what the worker was running, read from its
running-jobs file (:mod:`circus_djmaster.contracts.running_jobs`): docs/RELIABILITY.md,
"A worker dies: who is charged".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from circus_djmaster.contracts.running_jobs import JobLimits
from circus_djmaster.store import statements
from circus_djmaster.store.statements import ChargedJob, ReleasedJob, Statement

__all__ = ["DeathCharge", "Release", "charge_for_death"]


@dataclasses.dataclass(frozen=True)
class DeathCharge:
    """What the jobs of a worker that died get.

    ``charged``: the job it ran alone, charged an attempt against its own limits.
    ``isolated``: the jobs it ran side by side, not charged, run alone from now on.
    ``isolate_all``: nobody knows what it ran (no running-jobs file): every job it
    held is isolated, none charged. Jobs it held without running go back as they were.
    """

    charged: tuple[ChargedJob, ...] = ()
    isolated: tuple[int, ...] = ()
    isolate_all: bool = False

    @property
    def beside(self) -> int:
        """How many jobs ran beside each isolated one."""
        return max(0, len(self.isolated) - 1)


def charge_for_death(running: Mapping[int, JobLimits] | None) -> DeathCharge:
    """Who pays for a worker's death, from what it was running
    (``running_jobs.read_running``; None: its file is gone).

    Only a job that killed its worker while running alone is charged: when several ran
    at once nobody can tell which one killed it, and charging them all would fail an
    innocent job next to a poison one.
    """
    if running is None:
        return DeathCharge(isolate_all=True)
    if len(running) == 1:
        ((job_id, limits),) = running.items()
        return DeathCharge(
            charged=(ChargedJob(job_id, limits.max_attempts, limits.destroy_failed_jobs),)
        )
    return DeathCharge(isolated=tuple(sorted(running)))


@dataclasses.dataclass(frozen=True)
class Release:
    """Jobs locked by a worker of this host that died: release them, charging as
    ``charge`` says. ``death`` says how it died, e.g. "worker pid 12 on web1 was killed
    by SIGKILL"."""

    locked_by: str
    death: str
    charge: DeathCharge = dataclasses.field(default_factory=lambda: DeathCharge(isolate_all=True))

    def charged_error(self) -> str:
        return f"{self.death} while running this job"

    def isolated_error(self) -> str:
        if self.charge.isolate_all:
            return (
                f"{self.death} while it held this job (what it ran is unknown): it runs "
                "alone from now on; no attempt charged"
            )
        return (
            f"{self.death} while running this job beside {self.charge.beside} other "
            "job(s): nobody can tell which one killed it, so it runs alone from now on; "
            "no attempt charged"
        )

    def statement(self) -> Statement[list[ReleasedJob]]:
        """The ``release_dead_workers_jobs`` statement of this release."""
        return statements.release_dead_workers_jobs(
            [self.locked_by],
            charged=self.charge.charged,
            isolated=self.charge.isolated,
            isolate_all=self.charge.isolate_all,
            charged_error=self.charged_error(),
            isolated_error=self.isolated_error(),
        )
