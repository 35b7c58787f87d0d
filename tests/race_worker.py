"""One process of the race tests, run as ``python -m tests.race_worker MODE SECONDS``.

``heartbeat`` POSTs the heartbeat until time is up; ``manual`` keeps pressing "Run now"
(``trigger_run``) on random flows. ``DATABASE_URL`` names the test database. Prints a JSON
object counting the outcomes: HTTP status codes, or ``started`` / ``already_active``.

With ``DATAFLOWS_TEST_RACE_DIR``, the process says it is ready (a file ``ready-<pid>``
there) and waits for the file ``go`` before its first call, so that every process races
the others however long each took to start on a loaded machine.
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


def wait_for_the_start() -> None:
    """Say this process is ready, then wait (bounded) until every other one is."""
    folder = os.environ.get("DATAFLOWS_TEST_RACE_DIR")
    if not folder:
        return
    with open(os.path.join(folder, f"ready-{os.getpid()}"), "w"):
        pass
    deadline = time.monotonic() + 120
    while not os.path.exists(os.path.join(folder, "go")):
        if time.monotonic() > deadline:
            raise TimeoutError("the race never started")
        time.sleep(0.01)


def main(mode: str, seconds: float) -> None:
    outcomes: Counter[str] = Counter()
    wait_for_the_start()
    deadline = time.monotonic() + seconds
    try:
        {"heartbeat": heartbeats, "manual": manual_triggers}[mode](deadline, outcomes)
    except Exception:
        outcomes["error"] += 1
        traceback.print_exc()
    print(json.dumps(outcomes))


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
