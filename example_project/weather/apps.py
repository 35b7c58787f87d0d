from __future__ import annotations

from django.apps import AppConfig


class WeatherConfig(AppConfig):
    name = "example_project.weather"
    label = "weather"
    verbose_name = "Weather"
    default_auto_field = "django.db.models.BigAutoField"
