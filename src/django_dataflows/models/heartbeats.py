"""``Heartbeat``: one row per heartbeat call, for the dead-man's switch and the health page."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, models, transaction
from django.utils.translation import gettext_lazy as _

if TYPE_CHECKING:
    pass


class Heartbeat(models.Model):
    """The last heartbeat received (a single row), for the admin and health checks."""

    SINGLETON_PK = 1

    received_at = models.DateTimeField(_("received at"))
    source = models.CharField(_("source"), max_length=20)
    client = models.CharField(_("client"), max_length=64, blank=True)
    result = models.JSONField(_("result"), default=dict, encoder=DjangoJSONEncoder)

    class Meta:
        verbose_name = _("heartbeat")
        verbose_name_plural = _("heartbeats")

    def __str__(self) -> str:
        return f"Heartbeat at {self.received_at:%Y-%m-%d %H:%M:%S} ({self.source})"

    @classmethod
    def record(
        cls, *, received_at: datetime, source: str, client: str, result: dict[str, Any]
    ) -> None:
        """Keep this heartbeat as the last one (safe when many servers call at once)."""
        fields = {"received_at": received_at, "source": source, "client": client, "result": result}
        if cls.objects.filter(pk=cls.SINGLETON_PK).update(**fields):
            return
        try:
            with transaction.atomic():
                cls.objects.create(pk=cls.SINGLETON_PK, **fields)
        except IntegrityError:  # another server created it first
            cls.objects.filter(pk=cls.SINGLETON_PK).update(**fields)

    @classmethod
    def last(cls) -> Heartbeat | None:
        """The last heartbeat received, or ``None`` if there has never been one."""
        return cls.objects.filter(pk=cls.SINGLETON_PK).first()
