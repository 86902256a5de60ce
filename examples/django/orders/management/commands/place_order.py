"""`python manage.py place_order [--item NAME] [--fail]`: POST /orders/ without a server.

It calls the view through Django's test Client, so the request goes through the URL
conf, the middleware and the view's transaction exactly as under runserver.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.test import Client


class Command(BaseCommand):
    help = "Place an order through POST /orders/ (the view enqueues its confirmation job)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--item", default="widget")
        parser.add_argument(
            "--fail", action="store_true", help="decline the payment: the transaction rolls back"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        data = {"item": options["item"]}
        if options["fail"]:
            data["fail"] = "1"
        response = Client().post("/orders/", data)
        body = response.json()
        if response.status_code == 201:
            self.stdout.write(f"order {body['order']} placed, confirmation job {body['job']}")
        elif response.status_code == 402:
            self.stdout.write(f"{body['error']}: rolled back, no order and no job")
        else:
            raise CommandError(f"POST /orders/ answered {response.status_code}: {body}")
