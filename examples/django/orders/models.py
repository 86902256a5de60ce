from __future__ import annotations

from django.db import models


class Order(models.Model):
    PENDING = "pending"
    CONFIRMED = "confirmed"
    STATUSES = [(PENDING, "pending"), (CONFIRMED, "confirmed")]

    item = models.CharField(max_length=100)
    status = models.CharField(max_length=20, choices=STATUSES, default=PENDING)
    created_at = models.DateTimeField(auto_now_add=True)
    confirmed_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"order {self.pk} ({self.item}): {self.status}"
