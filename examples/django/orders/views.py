"""POST /orders/: create an order and enqueue its confirmation, in one transaction."""

from __future__ import annotations

from django.db import connection, transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from .jobs import confirm_order
from .models import Order


class PaymentDeclined(Exception):
    pass


@csrf_exempt  # an API endpoint for the example; keep CSRF on for browser forms
@require_POST
def place_order(request: HttpRequest) -> JsonResponse:
    """Form fields: ``item``; ``fail=1`` declines the payment after the job is enqueued."""
    item = request.POST.get("item", "widget")
    try:
        with transaction.atomic():
            order = Order.objects.create(item=item)
            # Enqueue on Django's own psycopg connection: the job row is part of this
            # transaction, so it exists only if the order does.
            connection.ensure_connection()
            job_id = confirm_order.enqueue([order.pk], connection=connection.connection)
            if request.POST.get("fail") == "1":
                raise PaymentDeclined(f"payment for order {order.pk} declined")
    except PaymentDeclined as exc:
        # The atomic block rolled back: neither the order nor its job was committed.
        return JsonResponse({"error": str(exc), "rolled_back": True}, status=402)
    return JsonResponse({"order": order.pk, "job": job_id, "status": order.status}, status=201)
