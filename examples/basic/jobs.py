"""The example's jobs: plain functions made into jobs with @job."""

from __future__ import annotations

import logging
import time

from circus_djmaster import job

log = logging.getLogger(__name__)


@job(queue="mail", max_attempts=5)
def send_welcome(user_id: int) -> None:
    time.sleep(0.05)  # pretend to talk to a mail server
    log.info("welcome mail sent to user %s", user_id)


@job(queue="reports", max_run_time=60)
def build_report(month: str) -> None:
    time.sleep(0.2)  # pretend to crunch numbers
    log.info("report for %s built", month)
