"""App configuration: discovers flows, registers the system checks, connects the alerts."""

from __future__ import annotations

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class DataFlowsConfig(AppConfig):
    name = "django_dataflows"
    label = "dataflows"
    verbose_name = _("Data flows")
    default_auto_field = "django.db.models.BigAutoField"

    #: Modules from DATAFLOWS["FLOW_MODULES"] that failed to import, for dataflows.E010.
    flow_module_errors: list[tuple[str, Exception]]

    def ready(self) -> None:
        from django_dataflows import alerts, checks  # noqa: F401 - checks registers itself
        from django_dataflows.backends.sync import connect_request_signals
        from django_dataflows.conf import app_settings
        from django_dataflows.flows import autodiscover
        from django_dataflows.models import use_run_starter
        from django_dataflows.runs import starting

        # The models start runs through the run engine, which sits above them.
        use_run_starter(starting)
        self.flow_module_errors = autodiscover(app_settings.FLOW_MODULES)
        connect_live_publisher()
        alerts.connect()
        # Before the first request: a start in it may ask to run after its response.
        connect_request_signals()
        connect_rollup_triggers(self)
        connect_pipelines()


def connect_rollup_triggers(app_config: AppConfig) -> None:
    """Restore rollup triggers a table rebuild dropped (SQLite); take deleted flows out of the
    rollup levels."""
    from django.db.models.signals import post_migrate, pre_delete

    from django_dataflows.models import DataFlow
    from django_dataflows.rollups import forget_flow, restore_dropped_triggers

    post_migrate.connect(
        restore_dropped_triggers, sender=app_config, dispatch_uid="dataflows-rollup-triggers"
    )
    # A deleted flow's hourly rollups go with it; the levels of all flows lose it here.
    pre_delete.connect(forget_flow, sender=DataFlow, dispatch_uid="dataflows-rollup-forget")


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
