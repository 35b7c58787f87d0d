"""The example's data flows: import observations, summarise them, check their quality.

django-dataflows imports this module at start-up (it is the ``flows`` module of an installed
app), which registers every ``Flow`` subclass in it. The ``seed`` command creates the
``DataFlow`` rows that schedule them.

Each flow is written so that running it twice, or again after a crash, does no harm:

- the import keeps its cursor (the last imported day) in ``self.state``, which is saved
  only with a successful run; it writes day by day, and a unique constraint (with ignored
  conflicts) makes a re-run after a crash write nothing twice;
- the summary recomputes only the days whose observations changed since they were last
  summarised, with an upsert;
- the quality check only reads.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import Any, ClassVar

from django.db import transaction
from django.db.models import Avg, Count, Exists, F, Max, Min, OuterRef, Q, Sum
from django.utils import timezone

from django_dataflows import Flow, PermanentFlowError
from example_project.weather.models import DailySummary, Observation, Station

#: The flows read only files in this directory; a configuration names a file, not a path.
DATA_DIR = Path(__file__).resolve().parent / "data"
#: Where the import stages its files between steps. On several machines (a resumed run may
#: continue on another worker) this would be shared storage, such as an S3 bucket.
STAGING_DIR = Path(
    os.environ.get("WEATHER_STAGING_DIR")
    or Path(__file__).resolve().parent.parent / "var" / "staging"
)


class BadDataFile(PermanentFlowError):
    """The CSV file is missing or malformed: retrying will not help until someone fixes it."""


class ImplausibleObservations(PermanentFlowError):
    """Imported observations that cannot be right (a broken sensor, a typo)."""


@dataclass(frozen=True)
class CsvRow:
    station_code: str
    station_name: str
    date: date
    temp_min_c: float
    temp_max_c: float
    precipitation_mm: float
    wind_speed_kmh: float

    @classmethod
    def from_stored(cls, stored: dict[str, Any]) -> CsvRow:
        """A row from its stored step result (dates are stored as ISO strings)."""
        return cls(**{**stored, "date": date.fromisoformat(stored["date"])})


def staged_file(name: str) -> Path:
    """The file ``name`` in :data:`STAGING_DIR` (a name read back from a step's result)."""
    path = (STAGING_DIR / name).resolve()
    if path.parent != STAGING_DIR.resolve() or not path.is_file():
        raise BadDataFile(f"No staged file {name!r}: was the staging directory emptied?")
    return path


def data_file(name: str) -> Path:
    """The file ``name`` in :data:`DATA_DIR`; anything that points elsewhere is refused."""
    path = (DATA_DIR / name).resolve()
    if path.parent != DATA_DIR or not path.is_file():
        available = ", ".join(sorted(p.name for p in DATA_DIR.glob("*.csv")))
        raise BadDataFile(f"No data file {name!r} in the weather data directory ({available}).")
    return path


def read_rows(path: Path) -> list[CsvRow]:
    """Parse the CSV file; a bad line is an error naming its line number."""
    rows = []
    with path.open(newline="", encoding="utf-8") as handle:
        for line_number, record in enumerate(csv.DictReader(handle), start=2):
            try:
                rows.append(
                    CsvRow(
                        station_code=record["station_id"],
                        station_name=record["station_name"],
                        date=date.fromisoformat(record["date"]),
                        temp_min_c=float(record["temp_min_c"]),
                        temp_max_c=float(record["temp_max_c"]),
                        precipitation_mm=float(record["precipitation_mm"]),
                        wind_speed_kmh=float(record["wind_speed_kmh"]),
                    )
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise BadDataFile(f"{path.name}, line {line_number}: {exc!r}") from exc
    return rows


class ImportObservations(Flow):
    """Import the next days of weather observations from a CSV file, in three steps.

    ``download`` fetches the file into a staging directory (here: copies it from
    ``weather/data/``), ``parse`` stages the ``days_per_run`` days after the cursor, and
    ``load`` writes them day by day, with progress and a checkpoint per day, so the run can
    be paused or cancelled between days. Steps hand on file names and counts, never the
    data itself. The cursor (the last imported day) lives in ``self.state``: it moves only
    when the whole run succeeds, and a re-run after a crash writes nothing twice (a unique
    constraint, with conflicts ignored).
    """

    verbose_name = "Import weather observations"
    configuration_schema: ClassVar[dict[str, Any] | None] = {
        "type": "object",
        "properties": {
            "csv_file": {"type": "string", "pattern": r"^[\w.-]+\.csv$"},
            "days_per_run": {"type": "integer", "minimum": 1},
        },
        "additionalProperties": False,
    }
    steps = ("download", "parse", "load")

    def download(self) -> dict[str, Any]:
        source = data_file(self.configuration.get("csv_file", "observations.csv"))
        STAGING_DIR.mkdir(parents=True, exist_ok=True)
        staged = STAGING_DIR / f"{self._staging_key()}.csv"
        shutil.copyfile(source, staged)
        return {"file": staged.name, "bytes": staged.stat().st_size}

    def parse(self) -> dict[str, Any]:
        cursor = self.state.get("last_imported_day")
        rows = read_rows(staged_file(self.results["download"]["file"]))
        new_rows = [row for row in rows if cursor is None or row.date.isoformat() > cursor]
        new_days = sorted({row.date for row in new_rows})
        days = set(new_days[: int(self.configuration.get("days_per_run", 5))])
        chunk = [asdict(row) for row in new_rows if row.date in days]
        staged = STAGING_DIR / f"{self._staging_key()}.json"
        staged.write_text(json.dumps(chunk, default=str), encoding="utf-8")
        self.progress(len(rows), total=len(rows), message="rows read")
        return {
            "file": staged.name,
            "rows": len(chunk),
            "days": len(days),
            "days_left": len(new_days) - len(days),
        }

    def load(self) -> dict[str, Any]:
        parsed = self.results["parse"]
        chunk = json.loads(staged_file(parsed["file"]).read_text(encoding="utf-8"))
        rows = [CsvRow.from_stored(row) for row in chunk]
        days = sorted({row.date for row in rows})
        stations = self._stations(rows)
        for done, day in enumerate(days, start=1):
            self.checkpoint()  # between days: a pause or cancel takes effect here
            with transaction.atomic():
                Observation.objects.bulk_create(
                    [
                        Observation(
                            station=stations[row.station_code],
                            date=row.date,
                            temp_min_c=row.temp_min_c,
                            temp_max_c=row.temp_max_c,
                            precipitation_mm=row.precipitation_mm,
                            wind_speed_kmh=row.wind_speed_kmh,
                        )
                        for row in rows
                        if row.date == day
                    ],
                    ignore_conflicts=True,  # a re-run after a crash writes nothing twice
                )
            self.progress(done, total=len(days), message="days loaded")
        if days:
            self.state["last_imported_day"] = days[-1].isoformat()  # saved with success only
        for name in (self.results["download"]["file"], parsed["file"]):
            staged_file(name).unlink(missing_ok=True)
        return {
            "imported": len(rows),
            "first_day": days[0].isoformat() if days else None,
            "last_day": days[-1].isoformat() if days else None,
            "days_left": parsed["days_left"],
        }

    def _staging_key(self) -> str:
        """Staged files are named after the run: unique, and found again on resume."""
        return self.context.run.task_id if self.context else "local"

    @staticmethod
    def _stations(rows: list[CsvRow]) -> dict[str, Station]:
        names = {row.station_code: row.station_name for row in rows}
        Station.objects.bulk_create(
            [Station(code=code, name=name) for code, name in names.items()],
            ignore_conflicts=True,
        )
        return {station.code: station for station in Station.objects.filter(code__in=names)}


class SummariseDailyWeather(Flow):
    """Summarise each day's observations across stations into the daily summary table.

    Only days without a summary, or with an observation changed since their summary was
    made (a late row, a correction in the admin), are recomputed.
    """

    verbose_name = "Summarise daily weather"

    def run(self) -> dict[str, Any]:
        now = timezone.now()
        up_to_date = DailySummary.objects.filter(
            date=OuterRef("date"), summarised_at__gte=OuterRef("updated_at")
        )
        stale_days = Observation.objects.filter(~Exists(up_to_date)).values("date")
        per_day = (
            Observation.objects.filter(date__in=stale_days)
            .values("date")
            .annotate(
                stations=Count("station"),
                mean=Avg((F("temp_min_c") + F("temp_max_c")) / 2),
                lowest=Min("temp_min_c"),
                highest=Max("temp_max_c"),
                precipitation=Sum("precipitation_mm"),
                wind=Max("wind_speed_kmh"),
            )
            .order_by("date")
        )
        summaries = [
            DailySummary(
                date=day["date"],
                stations_reporting=day["stations"],
                mean_temp_c=round(day["mean"], 1),
                min_temp_c=day["lowest"],
                max_temp_c=day["highest"],
                total_precipitation_mm=round(day["precipitation"], 1),
                max_wind_speed_kmh=day["wind"],
                summarised_at=now,
            )
            for day in per_day
        ]
        DailySummary.objects.bulk_create(
            summaries,
            update_conflicts=True,
            unique_fields=["date"],
            update_fields=[
                "stations_reporting",
                "mean_temp_c",
                "min_temp_c",
                "max_temp_c",
                "total_precipitation_mm",
                "max_wind_speed_kmh",
                "summarised_at",
            ],
        )
        return {
            "days_summarised": len(summaries),
            "first_day": summaries[0].date.isoformat() if summaries else None,
            "last_day": summaries[-1].date.isoformat() if summaries else None,
            "days_in_table": DailySummary.objects.count(),
        }


class ReportImportedDays(Flow):
    """Report the days the import just loaded, and how many stations reported each.

    It has no schedule: a successful import, its upstream flow, starts it. It reads what
    the import loaded from ``self.upstream_results`` (only reads: it changes nothing).
    """

    verbose_name = "Report imported days"

    def run(self) -> dict[str, Any]:
        loaded = next(iter(self.upstream_results.values()), None) or {}
        load = loaded.get("load") or {}
        first, last = load.get("first_day"), load.get("last_day")
        stations: dict[str, int] = {}
        if first and last:
            per_day = (
                Observation.objects.filter(date__range=(first, last))
                .values("date")
                .annotate(stations=Count("station"))
                .order_by("date")
            )
            stations = {row["date"].isoformat(): row["stations"] for row in per_day}
        return {"after_import": load, "stations_per_day": stations}


class CheckObservationQuality(Flow):
    """Fail when an imported observation is physically implausible.

    In the example it fails on purpose: the shipped CSV file has one broken reading
    (DE-BER on 2024-01-03, a maximum of 99.9 °C). Correct or delete that observation in
    the admin and the next run succeeds.
    """

    verbose_name = "Check observation quality"

    def run(self) -> dict[str, Any]:
        min_temp = float(self.configuration.get("min_temp_c", -60))
        max_temp = float(self.configuration.get("max_temp_c", 50))
        max_precipitation = float(self.configuration.get("max_precipitation_mm", 300))
        implausible = (
            Observation.objects.filter(
                Q(temp_min_c__lt=min_temp)
                | Q(temp_max_c__gt=max_temp)
                | Q(temp_min_c__gt=F("temp_max_c"))
                | Q(precipitation_mm__lt=0)
                | Q(precipitation_mm__gt=max_precipitation)
            )
            .select_related("station")
            .order_by("date", "station__code")
        )
        problems = [
            f"{obs.station.code} on {obs.date:%Y-%m-%d}: min {obs.temp_min_c} °C, "
            f"max {obs.temp_max_c} °C, precipitation {obs.precipitation_mm} mm"
            for obs in implausible[:10]
        ]
        if problems:
            count = implausible.count()
            raise ImplausibleObservations(
                f"{count} implausible observation(s) (allowed: {min_temp:g} to {max_temp:g} °C, "
                f"0 to {max_precipitation:g} mm): {'; '.join(problems)}. Correct or delete them "
                "in the admin (Weather > Observations); the next run will check again."
            )
        return {"observations_checked": Observation.objects.count(), "implausible": 0}
