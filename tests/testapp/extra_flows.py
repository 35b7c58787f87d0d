"""A flow module named in DATAFLOWS['FLOW_MODULES'] rather than found as ``flows``."""

from __future__ import annotations

from django_dataflows import Flow


class FromSettings(Flow):
    """Registered because its module is listed in settings."""

    def run(self) -> str:
        return "from settings"
