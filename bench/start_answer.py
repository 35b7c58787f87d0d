"""How long an API start holds its client, with the in-process backend, through gunicorn.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/dataflows_bench_start \
        python bench/start_answer.py

Starts gunicorn (one sync worker) on ``tests.wsgi``, then ``--rounds`` times: POSTs
``flows/{id}/start/`` for a flow whose body sleeps ``--seconds``, and measures when the
``202`` arrives and when the run has ended (polled in the database). Before the start
answered first, the answer came after the whole run; now it comes before the body starts.
Figures are printed, never asserted; with the load average, as the machine may be busy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

from common import ensure_database, say, setup_django

setup_django("postgres://postgres@127.0.0.1:5432/dataflows_bench_start")

from django.conf import settings  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from rest_framework.authtoken.models import Token  # noqa: E402
from tests.async_workers import wait_for  # noqa: E402
from tests.faults import AppServer, server_env  # noqa: E402

from django_dataflows.models import DataFlow, DataFlowRun, RunStatus  # noqa: E402


def database_url() -> str:
    db = settings.DATABASES["default"]
    return f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def start(port: int, flow_id: int, token: str) -> dict[str, object]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/dataflows/api/flows/{flow_id}/start/",
        data=b"{}",
        headers={"Authorization": f"Token {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=120) as response:  # noqa: S310
        assert response.status == 202, response.status
        return dict(json.loads(response.read()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()
    ensure_database()
    DataFlowRun.objects.all().delete()
    DataFlow.objects.filter(name="bench-start").delete()
    data_flow = DataFlow.objects.create(
        name="bench-start",
        flow="tests.testapp.flows.Sleeps",
        configuration={"seconds": args.seconds},
        run_interval=86_400,
    )
    user, _ = get_user_model().objects.get_or_create(
        username="bench-start", defaults={"is_superuser": True, "is_staff": True}
    )
    token = Token.objects.get_or_create(user=user)[0].key
    answers, ends = [], []
    with tempfile.TemporaryDirectory() as folder:
        server = AppServer(Path(folder) / "gunicorn.log", env=server_env(database_url()))
        with server:
            for index in range(args.rounds):
                sent = time.perf_counter()
                body = start(server.port, data_flow.pk, token)
                answered = time.perf_counter()
                assert body["status"] == RunStatus.PENDING, body
                run = DataFlowRun.objects.filter(pk=body["id"], status=RunStatus.SUCCESS)
                wait_for(
                    run.exists,
                    interval=0.005,
                    what="the run to end",
                )
                ended = time.perf_counter()
                answers.append((answered - sent) * 1000)
                ends.append((ended - sent) * 1000)
                say(f"  round {index + 1}/{args.rounds}: answer {answers[-1]:.0f} ms")
    say(f"load average (1, 5, 15 min): {os.getloadavg()}")
    say(f"flow body: sleeps {args.seconds * 1000:.0f} ms; {args.rounds} rounds, medians:")
    say(f"  202 with the pending run after  {statistics.median(answers):8.1f} ms")
    say(f"  run ended after                  {statistics.median(ends):8.1f} ms")
    say("  (before: the 202 came after the run ended, with the run already finished)")


if __name__ == "__main__":
    main()
