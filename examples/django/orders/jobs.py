"""The shop's jobs. Workers run them on threads, each with its own Django connection."""

from __future__ import annotations

import logging

from django.db import close_old_connections, transaction
from django.utils import timezone

from circus_djmaster import JobRecord, job

from .models import Order

log = logging.getLogger(__name__)


def close_old_db_connections(_job: JobRecord) -> None:
    """Before and after each job, what Django does around each request.

    It drops the thread's connection once it is older than CONN_MAX_AGE (at once with
    the default 0) or broken, so a long-lived worker thread never holds a stale one.
    """
    close_old_connections()


@job(
    queue="orders",
    max_attempts=5,
    before=close_old_db_connections,
    after=close_old_db_connections,
)
def confirm_order(order_id: int) -> None:
    with transaction.atomic():
        order = Order.objects.select_for_update().get(pk=order_id)
        if order.status == Order.CONFIRMED:
            return  # already done (a job may run again after a crash)
        order.status = Order.CONFIRMED
        order.confirmed_at = timezone.now()
        order.save(update_fields=["status", "confirmed_at"])
    log.info("order %s confirmed", order_id)
