"""One of the processes of the heartbeat race test: POST the heartbeat until time is up.

Run as ``python -m tests.race_worker SECONDS`` with ``DATABASE_URL`` naming the test
database; prints a JSON object counting the HTTP status codes it got.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

import django

django.setup()

from django.test import Client  # noqa: E402


def main(seconds: float) -> None:
    client = Client()
    statuses: Counter[int] = Counter()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        response = client.post("/dataflows/heartbeat/", REMOTE_ADDR="127.0.0.1")
        statuses[response.status_code] += 1
        if response.status_code != 200:
            sys.stderr.write(response.content.decode(errors="replace") + "\n")
    print(json.dumps(statuses))


if __name__ == "__main__":
    main(float(sys.argv[1]))
