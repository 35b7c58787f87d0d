"""Live streams and the rest of the site: the starvation matrix and the burst.

Starts real servers (gunicorn in several shapes, uvicorn) on a PostgreSQL database of its
own. **Starvation:** for each server, opens twice as many streams as it has threads,
then times ``GET runs/`` and ``POST heartbeat/`` while they are open. **Burst:** N
clients open a stream at once under uvicorn; counts snapshots received and errors, and
samples the peak number of database connections. Figures are printed, never asserted;
on a shared machine they are indicative (the load average is printed with them).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/dataflows_limits_bench \\
        .venv/bin/python bench/live_limits.py [--burst 300] [--samples 5]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import ensure_database, say, setup_django

setup_django("postgres://postgres@127.0.0.1:5432/dataflows_limits_bench")

from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from tests.factories import DataFlowRunFactory, UserFactory  # noqa: E402
from tests.sse import SSEClient, server_process  # noqa: E402

from django_dataflows.models import DataFlow, DataFlowRun, RunStatus  # noqa: E402

#: server kind → (threads serving requests, DATAFLOWS of the server)
MATRIX = {
    "gunicorn sync -w 3": ("gunicorn-sync-3", 3, {}),
    "gunicorn gthread (1 thread)": ("gunicorn-gthread-1", 1, {"SSE_WSGI_MAX_STREAMS": 0}),
    "gunicorn gthread 32 threads": ("gunicorn-gthread-32", 32, {}),
    "uvicorn": ("uvicorn", 8, {}),
}


def cookie() -> str:
    client = Client()
    UserFactory._meta.django_get_or_create = ("username",)
    client.force_login(UserFactory(username="bench", is_staff=True, is_superuser=True))
    return f"sessionid={client.cookies['sessionid'].value}"


def timed(port: int, method: str, path: str, cookie: str = "") -> tuple[int, float]:
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, headers={"Cookie": cookie} if cookie else {})
        response = conn.getresponse()
        response.read()
        return response.status, (time.perf_counter() - started) * 1000
    except TimeoutError:
        return 0, 60_000.0
    finally:
        conn.close()


def open_stream(port: int, path: str, session: str) -> SSEClient:
    """A stream as a browser opens it: a 503 is read and closed at once (to be tried
    again after Retry-After), a 200 kept open."""
    stream = SSEClient(port, path, cookie=session, timeout=60)
    if stream.status != 200:
        stream.body()
        stream.close()
    return stream


def starvation(logs: Path, session: str, samples: int) -> None:
    run = DataFlowRunFactory(status=RunStatus.IN_PROGRESS)
    path = f"/dataflows/api/runs/{run.pk}/events/"
    say(f"\nStarvation (load average {os.getloadavg()[0]:.2f}):")
    say(
        f"{'server':30} {'streams':>7} {'200':>4} {'503':>4} {'runs/ ms (med/max)':>20} "
        f"{'heartbeat ms (med/max)':>24}"
    )
    for label, (kind, threads, dataflows) in MATRIX.items():
        process, port = server_process(
            kind,
            logs / f"{kind}.log",
            DATAFLOWS_TEST_SETTINGS=json.dumps(dataflows),
            DATAFLOWS_TEST_SSE_KEEPALIVE="15",
        )
        with process:
            timed(port, "GET", "/dataflows/api/runs/", session)  # the worker's first request
            # Opened together: one by one on a loaded machine, the first would reach
            # their lifetime (SSE_WSGI_MAX_SECONDS) and give their slots back meanwhile.
            with ThreadPoolExecutor(max_workers=2 * threads) as pool:
                streams = list(
                    pool.map(lambda port: open_stream(port, path, session), [port] * (2 * threads))
                )
            for stream in streams:
                if stream.status == 200:
                    stream.next_event(timeout=60)
            runs = [timed(port, "GET", "/dataflows/api/runs/", session) for _ in range(samples)]
            beats = [timed(port, "POST", "/dataflows/heartbeat/") for _ in range(samples)]
            opened = sum(stream.status == 200 for stream in streams)
            refused = sum(stream.status == 503 for stream in streams)
            for stream in streams:
                stream.close()

        def fmt(values: list[tuple[int, float]]) -> str:
            times = [ms for _status, ms in values]
            bad = sum(status not in (200,) for status, _ms in values)
            text = f"{statistics.median(times):.0f}/{max(times):.0f}"
            return text + (f" ({bad} failed)" if bad else "")

        say(
            f"{label:30} {2 * threads:>7} {opened:>4} {refused:>4} {fmt(runs):>20} {fmt(beats):>24}"
        )


def burst(logs: Path, session: str, clients: int) -> None:
    run = DataFlowRunFactory(status=RunStatus.IN_PROGRESS)
    path = f"/dataflows/api/runs/{run.pk}/events/"
    peak = [0]
    done = threading.Event()

    def watch() -> None:
        with connection.temporary_connection() as cursor:
            while not done.is_set():
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid()"
                )
                peak[0] = max(peak[0], int(cursor.fetchone()[0]))
                done.wait(0.02)

    def open_one(_index: int) -> str:
        try:
            stream = SSEClient(port, path, cookie=session, timeout=120)
        except OSError as exc:
            return f"connect failed: {type(exc).__name__}"
        try:
            if stream.status != 200:
                return str(stream.status)
            event = stream.next_event(timeout=120)
            return event.event if event else "closed"
        finally:
            stream.close()

    connection.close()
    process, port = server_process("uvicorn", logs / "burst.log", DATAFLOWS_TEST_SETTINGS="{}")
    with process:
        watcher = threading.Thread(target=watch)
        watcher.start()
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=clients) as pool:
            outcomes = list(pool.map(open_one, range(clients)))
        elapsed = time.perf_counter() - started
        done.set()
        watcher.join()
    counts = {outcome: outcomes.count(outcome) for outcome in sorted(set(outcomes))}
    say(f"\nBurst under uvicorn (load average {os.getloadavg()[0]:.2f}): {clients} clients at once")
    say(f"  outcomes: {counts}; all opened in {elapsed:.1f} s")
    say(
        f"  peak database connections of the server (SSE_DB_CONNECTIONS = 4, "
        f"plus the poller and closing backends): {peak[0]}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burst", type=int, default=300, help="clients opening at once")
    parser.add_argument("--samples", type=int, default=5, help="timed requests of each kind")
    options = parser.parse_args()
    ensure_database()
    DataFlowRun.objects.all().delete()
    DataFlow.objects.all().delete()
    session = cookie()
    logs = Path(tempfile.mkdtemp(prefix="dataflows-limits-"))
    starvation(logs, session, options.samples)
    burst(logs, session, options.burst)
    say(f"\nServer logs: {logs}")


if __name__ == "__main__":
    main()
