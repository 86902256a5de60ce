"""A fresh Django project with the contrib app, run for real: its own PostgreSQL
database, ``manage.py migrate``, circusd with the master plugin, and workers that preload
the project with ``app = "circus_djmaster.contrib.django.worker"``.

``@task`` functions enqueued with Django's API inside ``transaction.atomic()`` run (a
rolled-back one never does); a failed task shows in the admin, whose retry action makes
it run; a scheduled one is made due from the admin; the management commands talk to the
running circusd.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from tests.contrib.conftest import DjangoProject
from tests.support.waiting import wait_until

DEADLINE = 30.0
Project = Callable[..., DjangoProject]

ENQUEUE = """
import asyncio
import datetime as dt
from django.db import transaction
from django.utils import timezone
from shop import tasks
from circus_djmaster import enqueue_many

with transaction.atomic():
    print("committed", tasks.record.enqueue("committed").id)
try:
    with transaction.atomic():
        print("rolled", tasks.record.enqueue("rolled-back").id)
        raise RuntimeError("payment declined")
except RuntimeError:
    pass
print("urgent", tasks.urgent.enqueue("urgent").id)
print("context", tasks.with_context.enqueue("context").id)
print("async", asyncio.run(tasks.arecord.aenqueue("async")).id)
print("flaky", tasks.flaky.enqueue("flaky").id)
print("doomed", tasks.flaky.enqueue("doomed").id)
later = timezone.now() + dt.timedelta(hours=1)
print("later", tasks.record.using(run_after=later).enqueue("later").id)
enqueue_many([tasks.plain_job.call(f"plain-{n}") for n in range(3)], using="default")
"""

ADMIN = """
from django.contrib.auth.models import User
from django.test import Client
from shop.models import Switch

User.objects.create_superuser("admin", "admin@example.com", "not-a-secret")
client = Client()
client.force_login(User.objects.get(username="admin"))
failed = "/admin/djmaster/failedjob/"
scheduled = "/admin/djmaster/scheduledjob/"

def show(name, response, *needles):
    text = response.content.decode()
    print(name, response.status_code, *[needle in text for needle in needles])

show("failed-list", client.get(failed), "task shop.tasks.flaky", "the switch is off")
show("search-hit", client.get(failed, {"q": "shop.tasks.flaky"}), "task shop.tasks.flaky")
show("search-miss", client.get(failed, {"q": "no-such-handler"}), "task shop.tasks.flaky")
show("add", client.get(failed + "add/"))
show("change", client.post(failed + "%(flaky)s/change/", {"handler": "{}"}))
show("view", client.get(failed + "%(flaky)s/change/"), "Save")
show("scheduled-list", client.get(scheduled), "task shop.tasks.record", "waiting")
Switch.objects.create(name="flaky", on=True)
action = {"action": "retry_jobs", "_selected_action": ["%(flaky)s"]}
show("retry", client.post(failed, action, follow=True), "Retried 1 job(s)")
action = {"action": "delete_jobs", "_selected_action": ["%(doomed)s"]}
show("delete", client.post(failed, action, follow=True), "Deleted 1 job(s)")
action = {"action": "make_due_now", "_selected_action": ["%(later)s"]}
show("due-now", client.post(scheduled, action, follow=True), "Made due now 1 job(s)")
"""


def events(project: DjangoProject) -> dict[str, tuple[int, str]]:
    with project.connect() as conn:
        rows = conn.execute("SELECT key, attempt, job_id FROM shop_event").fetchall()
    return {key: (attempt, job_id) for key, attempt, job_id in rows}


def job_row(project: DjangoProject, job_id: int) -> tuple[object, ...] | None:
    with project.connect() as conn:
        return conn.execute(
            "SELECT attempts, failed_at IS NOT NULL, last_error FROM delayed_jobs WHERE id = %s",
            (job_id,),
        ).fetchone()


def test_tasks_run_under_circusd_and_the_admin_retries_a_failed_one(
    make_project: Project,
) -> None:
    project = make_project()
    project.manage("migrate")
    project.write_djmaster_settings()
    run = project.start_circus()
    try:
        ids = {
            name: int(value)
            for name, value in re.findall(r"^(\w+) (\d+)$", project.shell(ENQUEUE), re.M)
        }
        assert set(ids) == {
            "committed",
            "rolled",
            "urgent",
            "context",
            "async",
            "flaky",
            "doomed",
            "later",
        }

        def settled() -> bool:
            done = events(project)
            flaky, doomed = job_row(project, ids["flaky"]), job_row(project, ids["doomed"])
            return (
                {"committed", "urgent", "context", "async", "plain-0", "plain-1", "plain-2"}
                <= set(done)
                and flaky is not None
                and flaky[1] is True
                and doomed is not None
                and doomed[1] is True
            )

        wait_until(settled, DEADLINE, "the tasks to run and the flaky ones to fail")
        done = events(project)
        assert "rolled-back" not in done and job_row(project, ids["rolled"]) is None
        assert done["context"] == (1, str(ids["context"]))  # TaskContext: attempt, job id
        # The preload closed each job's connection: three jobs, three server sessions,
        # though two threads ran them (one ran at least two).
        assert len({done[f"plain-{n}"][1] for n in range(3)}) == 3
        flaky = job_row(project, ids["flaky"])
        assert flaky is not None and "RuntimeError: flaky flaky: the switch is off" in str(flaky[2])
        assert "later" not in done  # scheduled an hour ahead

        admin = project.shell(ADMIN % ids).splitlines()
        assert admin == [
            "failed-list 200 True True",
            "search-hit 200 True",
            "search-miss 200 False",
            "add 403",
            "change 403",
            "view 200 False",  # read-only: no Save button
            "scheduled-list 200 True True",
            "retry 200 True",
            "delete 200 True",
            "due-now 200 True",
        ], admin
        wait_until(
            lambda: {"flaky", "later"} <= set(events(project)),
            DEADLINE,
            "the retried and the due-now tasks to run",
        )
        assert events(project)["flaky"][0] == 1  # attempts were reset: its first attempt
        assert job_row(project, ids["doomed"]) is None  # deleted from the admin

        assert project.manage("djmaster", "wait", "--timeout", "30").stdout == "no job left\n"
        status = project.manage("djmaster", "status").stdout
        assert "watcher djmaster-tasks-primary: active" in status, status
        assert "ready 0  running 0  scheduled 0  failed 0" in status, status
    except BaseException:
        print(run.logs())
        raise
    finally:
        run.close()
