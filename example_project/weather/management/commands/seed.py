"""``manage.py seed``: create the example's data flows (safe to run again)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from django_dataflows.models import DataFlow
from example_project.weather.flows import (
    CheckObservationQuality,
    ImportObservations,
    ReportImportedDays,
    SummariseDailyWeather,
)
from example_project.weather.models import DailySummary, Observation, Station

#: The example's flows. Short intervals keep the demo lively; real flows run less often.
EXAMPLE_FLOWS: list[dict[str, Any]] = [
    {
        "name": "Import weather observations",
        "flow": ImportObservations.flow_path(),
        "run_interval": 20,
        "configuration": {"csv_file": "observations.csv", "days_per_run": 5},
        "description": "Imports the next 5 days of observations from "
        "weather/data/observations.csv on every run, until the file is used up.",
    },
    {
        "name": "Summarise daily weather",
        "flow": SummariseDailyWeather.flow_path(),
        "run_interval": 30,
        "configuration": {},
        "description": "Fills the daily summary table from the imported observations.",
    },
    {
        "name": "Check observation quality",
        "flow": CheckObservationQuality.flow_path(),
        "run_interval": 45,
        "configuration": {"min_temp_c": -60, "max_temp_c": 50, "max_precipitation_mm": 300},
        "description": "Fails on purpose while the broken reading shipped in the data file "
        "(DE-BER, 2024-01-03, 99.9 °C) is in the database. Fix it in the admin to see the "
        "next run succeed.",
    },
    {
        "name": "Nightly weather summary (Berlin)",
        "flow": SummariseDailyWeather.flow_path(),
        # A cron schedule on Berlin's wall clock: 02:30 every night, summer time included.
        "cron": "30 2 * * *",
        "timezone": "Europe/Berlin",
        # A dead man's switch: overdue, and an alert e-mail, after 26 hours without success.
        "alert_after": 26 * 3600,
        "configuration": {},
        "description": "The summary again, the way a production site would schedule it: "
        "nightly at 02:30 Berlin time, overdue if it has not succeeded for 26 hours.",
    },
    {
        "name": "Report after import",
        "flow": ReportImportedDays.flow_path(),
        # No schedule: it runs after each successful import, its upstream flow.
        "run_interval": None,
        "upstream": ["Import weather observations"],
        "configuration": {},
        "description": "Runs after every successful import (a pipeline): reports the days "
        "the import loaded and how many stations reported each.",
    },
]


class Command(BaseCommand):
    help = (
        "Create the example's data flows. Flows that exist already are left as they are "
        "(edits made in the admin are kept). --reset-data empties the weather tables so the "
        "import starts again from the first day."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--reset-data",
            action="store_true",
            help="Delete every station, observation and daily summary first, and reset the "
            "import's cursor.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        with transaction.atomic():
            if options["reset_data"]:
                self._reset_data()
            for spec in EXAMPLE_FLOWS:
                fields = {
                    key: value for key, value in spec.items() if key not in ("name", "upstream")
                }
                data_flow, created = DataFlow.objects.get_or_create(
                    name=spec["name"], defaults=fields
                )
                if created and spec.get("upstream"):
                    data_flow.upstream_flows.set(DataFlow.objects.filter(name__in=spec["upstream"]))
                state = "created" if created else "exists, left unchanged"
                if data_flow.cron:
                    schedule = f"cron {data_flow.cron} ({data_flow.timezone})"
                elif data_flow.run_interval is not None:
                    schedule = f"every {data_flow.run_interval}s"
                else:
                    upstream = ", ".join(flow.name for flow in data_flow.upstream_flows.all())
                    schedule = f"after {upstream or 'nothing: started by hand'}"
                self.stdout.write(f"  {data_flow.name}: {schedule} ({state})")

    def _reset_data(self) -> None:
        summaries = DailySummary.objects.all().delete()[0]
        observations = Observation.objects.count()
        Station.objects.all().delete()  # cascades to the observations
        # The import's cursor lives in its state: back to the first day.
        DataFlow.objects.filter(flow=ImportObservations.flow_path()).update(state={})
        self.stdout.write(
            f"  Deleted {observations} observation(s) and {summaries} daily summary row(s)."
        )
