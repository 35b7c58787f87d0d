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
        from django_dataflows.conf import app_settings
        from django_dataflows.flows import autodiscover

        self.flow_module_errors = autodiscover(app_settings.FLOW_MODULES)
        alerts.connect()
