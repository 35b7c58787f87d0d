from __future__ import annotations

from django.db import models


class Record(models.Model):
    """A row a test flow writes, so tests can see that (and how often) a flow ran."""

    label = models.CharField(max_length=100)
    run_id = models.BigIntegerField(null=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.label
