"""A module the tests name in ``recurring_modules``: recurring jobs declared in code."""

from __future__ import annotations

from circus_djmaster import job, recurring


@recurring(every=3600, name="hourly_in_code")
@job(queue="code")
def hourly() -> None:
    """Declared in code; the settings' entries come from [[recurring]]."""
