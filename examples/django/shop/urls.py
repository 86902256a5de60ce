from __future__ import annotations

from django.contrib import admin
from django.urls import path
from orders import views

urlpatterns = [
    path("orders/", views.place_order, name="place-order"),
    path("admin/", admin.site.urls),  # Delayed jobs: failed and scheduled, retry, delete
]
