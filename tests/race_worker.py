"""One process of the race tests, run as ``python -m tests.race_worker MODE SECONDS``.

``heartbeat`` POSTs the heartbeat until time is up; ``manual`` keeps pressing "Run now"
(``trigger_run``) on random flows. ``DATABASE_URL`` names the test database. Prints a JSON
object counting the outcomes: HTTP status codes, or ``started`` / ``already_active``.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
import traceback
from collections import Counter

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

import django

django.setup()

from django.test import Client  # noqa: E402

from django_dataflows.exceptions import RunAlreadyActive  # noqa: E402
from django_dataflows.models import DataFlow  # noqa: E402


def heartbeats(deadline: float, outcomes: Counter[str]) -> None:
    client = Client()
    while time.monotonic() < deadline:
        response = client.post("/dataflows/heartbeat/", REMOTE_ADDR="127.0.0.1")
        outcomes[str(response.status_code)] += 1
        if response.status_code != 200:
            sys.stderr.write(response.content.decode(errors="replace") + "\n")


def manual_triggers(deadline: float, outcomes: Counter[str]) -> None:
    flows = list(DataFlow.objects.all())
    while time.monotonic() < deadline:
        try:
            random.choice(flows).trigger_run()
        except RunAlreadyActive:
            outcomes["already_active"] += 1
        else:
            outcomes["started"] += 1
        time.sleep(0.01)


def main(mode: str, seconds: float) -> None:
    outcomes: Counter[str] = Counter()
    deadline = time.monotonic() + seconds
    try:
        {"heartbeat": heartbeats, "manual": manual_triggers}[mode](deadline, outcomes)
    except Exception:
        outcomes["error"] += 1
        traceback.print_exc()
    print(json.dumps(outcomes))


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
