"""`python manage.py list_orders`: one line per order, with its status."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from orders.models import Order


class Command(BaseCommand):
    help = "List the orders and their status."

    def handle(self, *args: Any, **options: Any) -> None:
        orders = Order.objects.order_by("pk")
        for order in orders:
            self.stdout.write(str(order))
        self.stdout.write(f"{len(orders)} order(s)")
