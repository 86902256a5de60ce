"""POST /orders/: create an order and enqueue its confirmation, in one transaction."""

from __future__ import annotations

from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from .models import Order
from .tasks import confirm_order


class PaymentDeclined(Exception):
    pass


@csrf_exempt  # an API endpoint for the example; keep CSRF on for browser forms
@require_POST
def place_order(request: HttpRequest) -> JsonResponse:
    """Form fields: ``item``; ``fail=1`` declines the payment after the task is enqueued."""
    item = request.POST.get("item", "widget")
    try:
        with transaction.atomic():
            order = Order.objects.create(item=item)
            # The circus-djmaster backend writes the job on Django's own connection: it
            # is part of this transaction, so it exists only if the order does.
            result = confirm_order.enqueue(order.pk)
            if request.POST.get("fail") == "1":
                raise PaymentDeclined(f"payment for order {order.pk} declined")
    except PaymentDeclined as exc:
        # The atomic block rolled back: neither the order nor its job was committed.
        return JsonResponse({"error": str(exc), "rolled_back": True}, status=402)
    return JsonResponse({"order": order.pk, "job": result.id, "status": order.status}, status=201)
