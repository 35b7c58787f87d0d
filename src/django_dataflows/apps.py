"""App configuration: discovers flows, registers the system checks, connects the alerts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _

if TYPE_CHECKING:
    from django_dataflows.models import Backfill, DataFlow, DataFlowRun


class DataFlowsConfig(AppConfig):
    name = "django_dataflows"
    label = "dataflows"
    verbose_name = _("Data flows")
    default_auto_field = "django.db.models.BigAutoField"

    #: Modules from DATAFLOWS["FLOW_MODULES"] that failed to import, for dataflows.E010.
    flow_module_errors: list[tuple[str, Exception]]

    def ready(self) -> None:
        from django_dataflows import alerts, checks  # noqa: F401 - checks registers itself
        from django_dataflows.conf import app_settings
        from django_dataflows.flows import autodiscover

        self.flow_module_errors = autodiscover(app_settings.FLOW_MODULES)
        connect_live_publisher()
        alerts.connect()
        connect_pipelines()

    # The models' DataFlow.create_pending_run() and trigger_run() land here: the app is the
    # one place that knows both the models and what sits above them (bookkeeping, backends).

    def create_pending_run(self, data_flow: DataFlow, **kwargs: Any) -> DataFlowRun:
        from django_dataflows.bookkeeping import create_pending_run

        return create_pending_run(data_flow, **kwargs)

    def trigger_run(self, data_flow: DataFlow, **kwargs: Any) -> DataFlowRun:
        from django_dataflows.backends import trigger_run

        return trigger_run(data_flow, **kwargs)

    def create_backfill(self, data_flow: DataFlow, *args: Any, **kwargs: Any) -> Backfill:
        from django_dataflows.backfills import create_backfill

        return create_backfill(data_flow, *args, **kwargs)

    def hand_to_backend(self, run: DataFlowRun) -> None:
        from django_dataflows.backends import hand_over

        hand_over(run)


def connect_pipelines() -> None:
    """Start ready downstream flows as soon as a run ends (the heartbeat would, later)."""
    from django_dataflows import signals
    from django_dataflows.models import DataFlow
    from django_dataflows.scheduling import start_ready_downstream

    signals.run_finished.connect(
        start_ready_downstream, sender=DataFlow, dispatch_uid="dataflows.pipelines"
    )


def connect_live_publisher() -> None:
    """Send changes to the live event source if it is one that publishes them.

    With the default polling source nothing is connected, so writes cost nothing extra.
    A source that cannot be imported is reported by a system check, not here.
    """
    from django.core.exceptions import ImproperlyConfigured

    from django_dataflows import signals
    from django_dataflows.conf import app_settings
    from django_dataflows.live import load_event_source_class, publish_runs_changed

    try:
        publishes = load_event_source_class(app_settings.EVENTS).publishes
    except ImproperlyConfigured:
        publishes = False
    if publishes:
        signals.runs_changed.connect(publish_runs_changed, dispatch_uid="dataflows-live")
    else:
        signals.runs_changed.disconnect(dispatch_uid="dataflows-live")
