"""The jobs of ``djmaster demo``: short sleeps, a few that fail once and are retried."""

from __future__ import annotations

import os
import time

import psycopg

from circus_djmaster.api.jobs import job


def _fails_once(name: str) -> bool:
    """True the first time it is asked about ``name`` (remembered in the database)."""
    with psycopg.connect(os.environ["DJMASTER_DATABASE_URL"], autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO demo_failed_once (name) VALUES (%s) ON CONFLICT DO NOTHING RETURNING 1",
            (name,),
        ).fetchone()
    return row is not None


@job(queue="mail")
def send_mail(number: int, seconds: float, fail_once: bool = False) -> None:
    time.sleep(seconds)
    if fail_once and _fails_once(f"mail-{number}"):
        raise ConnectionError(f"mail server hiccup for mail {number} (the retry will work)")


@job(queue="reports")
def build_report(number: int, seconds: float, fail_once: bool = False) -> None:
    time.sleep(seconds)
    if fail_once and _fails_once(f"report-{number}"):
        raise TimeoutError(f"report {number} timed out (the retry will work)")
