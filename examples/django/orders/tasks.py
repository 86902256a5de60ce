"""The shop's tasks, written with Django's task API (django.tasks, or the django-tasks
backport before Django 6) and run by circus-djmaster workers."""

from __future__ import annotations

import logging

from django.db import transaction
from django.utils import timezone

from .models import Order

try:
    from django.tasks import task  # Django >= 6
except ImportError:  # Django 4.2-5.2: pip install django-tasks
    from django_tasks import task

log = logging.getLogger(__name__)


@task(queue_name="orders")
def confirm_order(order_id: int) -> None:
    """Mark an order confirmed. A worker runs it; it may run again after a crash."""
    with transaction.atomic():
        order = Order.objects.select_for_update().get(pk=order_id)
        if order.status == Order.CONFIRMED:
            return  # already done
        order.status = Order.CONFIRMED
        order.confirmed_at = timezone.now()
        order.save(update_fields=["status", "confirmed_at"])
    log.info("order %s confirmed", order_id)
