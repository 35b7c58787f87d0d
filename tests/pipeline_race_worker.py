"""One process of the pipeline race, run as ``python -m tests.pipeline_race_worker MODE N``.

``heartbeat`` runs N heartbeats (in-process backend: each also runs what it claims);
``upstream`` starts the flows named ``up-*`` N times each, in turn (their successes start
the downstream flows from this process too). ``DATABASE_URL`` names the test database.
Prints a JSON object counting the outcomes.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections import Counter

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

import django

django.setup()

from django_dataflows.exceptions import RunAlreadyActive  # noqa: E402
from django_dataflows.models import DataFlow  # noqa: E402
from django_dataflows.scheduling import run_heartbeat  # noqa: E402


def heartbeats(count: int, outcomes: Counter[str]) -> None:
    for _ in range(count):
        result = run_heartbeat(source="test")
        outcomes["heartbeat"] += 1
        outcomes["triggered"] += result.flows_triggered


def upstream_runs(count: int, outcomes: Counter[str]) -> None:
    flows = list(DataFlow.objects.filter(name__startswith="up-").order_by("name"))
    for _ in range(count):
        for flow in flows:
            try:
                flow.trigger_run()
            except RunAlreadyActive:
                outcomes["already_active"] += 1
            else:
                outcomes["started"] += 1


def main(mode: str, count: int) -> None:
    outcomes: Counter[str] = Counter()
    try:
        {"heartbeat": heartbeats, "upstream": upstream_runs}[mode](count, outcomes)
    except Exception:
        outcomes["error"] += 1
        traceback.print_exc()
    print(json.dumps(outcomes))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
