"""Where the example flows put their data: stations, observations and daily summaries."""

from __future__ import annotations

from django.db import models


class Station(models.Model):
    """A weather station, created by the import flow the first time it reports."""

    code = models.CharField(max_length=20, unique=True)
    name = models.CharField(max_length=100)

    class Meta:
        ordering = ("code",)

    def __str__(self) -> str:
        return f"{self.code} ({self.name})"


class Observation(models.Model):
    """One station's readings for one day, as imported from the CSV file."""

    station = models.ForeignKey(Station, on_delete=models.CASCADE, related_name="observations")
    date = models.DateField(db_index=True)
    temp_min_c = models.FloatField("minimum temperature (°C)")
    temp_max_c = models.FloatField("maximum temperature (°C)")
    precipitation_mm = models.FloatField("precipitation (mm)")
    wind_speed_kmh = models.FloatField("wind speed (km/h)")
    imported_at = models.DateTimeField(auto_now_add=True)
    # The summary flow re-summarises a day when one of its observations changed after it.
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("date", "station")
        constraints = (
            # One reading per station and day: a re-run can never import a row twice.
            models.UniqueConstraint(fields=("station", "date"), name="weather_one_obs_per_day"),
        )

    def __str__(self) -> str:
        return f"{self.station.code} {self.date:%Y-%m-%d}"


class DailySummary(models.Model):
    """The weather of one day across every station that reported."""

    date = models.DateField(unique=True)
    stations_reporting = models.PositiveSmallIntegerField()
    mean_temp_c = models.FloatField("mean temperature (°C)")
    min_temp_c = models.FloatField("lowest temperature (°C)")
    max_temp_c = models.FloatField("highest temperature (°C)")
    total_precipitation_mm = models.FloatField("total precipitation (mm)")
    max_wind_speed_kmh = models.FloatField("highest wind speed (km/h)")
    summarised_at = models.DateTimeField()

    class Meta:
        ordering = ("-date",)
        verbose_name_plural = "daily summaries"

    def __str__(self) -> str:
        return f"{self.date:%Y-%m-%d}: {self.mean_temp_c:.1f} °C, {self.total_precipitation_mm} mm"
