"""Pipelines: which upstream runs a downstream flow has taken in, and who is in a pipeline."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.db import models
from django.db.models import (
    OuterRef,
    Q,
)
from django.utils.translation import gettext_lazy as _

from .flows import DataFlow

if TYPE_CHECKING:
    pass


class UpstreamMark(models.Model):
    """How far a downstream flow has taken in an upstream flow's successful runs.

    ``run_id`` is the newest successful run of ``upstream`` that a run of ``downstream``
    was started for; a success with a larger id is new to ``downstream``. No row means
    none taken in yet. Written with the downstream run, in the same transaction.
    """

    downstream = models.ForeignKey(
        DataFlow, on_delete=models.CASCADE, related_name="+", verbose_name=_("downstream flow")
    )
    upstream = models.ForeignKey(
        DataFlow, on_delete=models.CASCADE, related_name="+", verbose_name=_("upstream flow")
    )
    run_id = models.BigIntegerField(_("newest run taken in"))

    class Meta:
        verbose_name = _("upstream mark")
        verbose_name_plural = _("upstream marks")
        constraints = (
            models.UniqueConstraint(
                fields=("downstream", "upstream"), name="dataflows_one_mark_per_dependency"
            ),
        )

    def __str__(self) -> str:
        return f"{self.upstream_id} → {self.downstream_id}: run {self.run_id}"


def mark_pipeline_flows(flow_ids: Any) -> None:
    """Set ``in_pipeline`` on these flows from their dependencies (one statement)."""
    through = DataFlow.upstream_flows.through
    linked = through.objects.filter(
        Q(from_dataflow_id=OuterRef("pk")) | Q(to_dataflow_id=OuterRef("pk"))
    )
    DataFlow.objects.filter(pk__in=list(flow_ids)).update(in_pipeline=models.Exists(linked))


def _dependencies_changed(
    sender: Any, instance: Any, action: str, pk_set: Any, **kwargs: Any
) -> None:
    if action in ("post_add", "post_remove", "post_clear", "pre_clear"):
        if action == "pre_clear":  # the other ends are gone after the clear: note them now
            through = DataFlow.upstream_flows.through
            instance._dataflows_cleared = set(
                through.objects.filter(
                    Q(from_dataflow_id=instance.pk) | Q(to_dataflow_id=instance.pk)
                ).values_list("from_dataflow_id", "to_dataflow_id")
            )
            return
        ids = {instance.pk, *(pk_set or ())}
        for pair in getattr(instance, "_dataflows_cleared", ()):
            ids.update(pair)
        mark_pipeline_flows(ids)


models.signals.m2m_changed.connect(
    _dependencies_changed,
    sender=DataFlow.upstream_flows.through,
    dispatch_uid="dataflows.in_pipeline",
)
