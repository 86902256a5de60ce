"""What the test project's tasks write, so that tests can see they ran."""

from __future__ import annotations

from django.db import models


class Event(models.Model):
    """One run of a task: its key, the attempt it was, the job id it had."""

    key = models.CharField(max_length=200)
    attempt = models.IntegerField(default=0)
    job_id = models.CharField(max_length=40, blank=True)
    at = models.DateTimeField(auto_now_add=True)


class Switch(models.Model):
    """A named on/off switch: ``flaky`` fails while its switch is off."""

    name = models.CharField(max_length=50, unique=True)
    on = models.BooleanField(default=False)
