"""The Django app of circus-djmaster (label ``djmaster``)."""

from __future__ import annotations

from django.apps import AppConfig


class DjmasterConfig(AppConfig):
    """``"circus_djmaster.contrib.django"`` in INSTALLED_APPS: migration, admin, commands."""

    name = "circus_djmaster.contrib.django"
    label = "djmaster"
    verbose_name = "Delayed jobs"
    default_auto_field = "django.db.models.BigAutoField"
