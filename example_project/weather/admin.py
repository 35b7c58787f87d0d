"""The weather tables in the admin, to watch the flows' work arrive (and fix bad data)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from example_project.weather.models import DailySummary, Observation, Station


@admin.register(Station)
class StationAdmin(admin.ModelAdmin):
    list_display = ("code", "name")
    search_fields = ("code", "name")


@admin.register(Observation)
class ObservationAdmin(admin.ModelAdmin):
    list_display = (
        "date",
        "station",
        "temp_min_c",
        "temp_max_c",
        "precipitation_mm",
        "wind_speed_kmh",
        "imported_at",
    )
    list_filter = ("station",)
    date_hierarchy = "date"
    list_select_related = ("station",)
    readonly_fields = ("imported_at", "updated_at")


@admin.register(DailySummary)
class DailySummaryAdmin(admin.ModelAdmin):
    """Read-only: the summary flow owns this table."""

    list_display = (
        "date",
        "stations_reporting",
        "mean_temp_c",
        "min_temp_c",
        "max_temp_c",
        "total_precipitation_mm",
        "max_wind_speed_kmh",
        "summarised_at",
    )
    date_hierarchy = "date"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
