"""The example's jobs: plain circus-djmaster jobs, run by workers under circus."""

from __future__ import annotations

import logging
import os

import psycopg

from circus_djmaster import job

log = logging.getLogger(__name__)


@job(queue="mail", max_attempts=5)
def send_welcome(signup_id: int) -> None:
    """Pretend to send the mail, then mark the signup welcomed."""
    with psycopg.connect(os.environ["DJMASTER_DATABASE_URL"]) as conn:
        row = conn.execute(
            "UPDATE signups SET welcomed_at = now() WHERE id = %s RETURNING email",
            (signup_id,),
        ).fetchone()
    log.info("welcome mail sent to signup %s (%s)", signup_id, row[0] if row else "gone")


@job(queue="mail")
def send_newsletter(issue: str) -> None:
    """Pretend to send a newsletter issue."""
    log.info("newsletter %s sent", issue)
