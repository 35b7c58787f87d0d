"""Live status benchmark: event latency, idle clients' cost, database queries per second.

Starts a real uvicorn (ASGI) process on a PostgreSQL database of its own and reads the
streams over sockets, as browsers would. For each event source (database polling,
PostgreSQL LISTEN/NOTIFY, Redis pub/sub) and 1 and 100 clients, this process commits 200
progress changes to one run and measures how long each takes to reach every client.
Figures are printed, never asserted.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/dataflows_live_bench \\
        .venv/bin/python bench/live.py [--changes 200] [--clients 1,100]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

from common import ensure_database, say, setup_django

setup_django("postgres://postgres@127.0.0.1:5432/dataflows_live_bench")

from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from tests.factories import DataFlowRunFactory, UserFactory  # noqa: E402
from tests.sse import SSEClient, server_process  # noqa: E402

from django_dataflows.apps import connect_live_publisher  # noqa: E402
from django_dataflows.conf import app_settings  # noqa: E402
from django_dataflows.models import DataFlow, DataFlowRun, RunStatus  # noqa: E402

SOURCES = {
    "polling": "django_dataflows.live.polling.PollingEvents",
    "LISTEN/NOTIFY": "django_dataflows.live.postgres.PostgresEvents",
    "redis": "django_dataflows.live.redis.RedisEvents",
}
REDIS_URL = "redis://127.0.0.1:6379/8"
HZ = 100  # clock ticks per second of /proc/<pid>/stat


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def cookie() -> str:
    client = Client()
    client.force_login(UserFactory(username="bench", is_staff=True, is_superuser=True))
    return f"sessionid={client.cookies['sessionid'].value}"


def use_source(path: str) -> None:
    """This process (the writer) announces its changes to ``path``, as workers would."""
    from django.conf import settings

    settings.DATAFLOWS = {**settings.DATAFLOWS, "EVENTS": path, "EVENTS_REDIS_URL": REDIS_URL}
    connect_live_publisher()


class Reader(threading.Thread):
    """One client: records when each change (``progress.done``) arrived."""

    def __init__(self, port: int, path: str, cookie: str) -> None:
        super().__init__(daemon=True)
        self.stream = SSEClient(port, path, cookie=cookie, timeout=60)
        self.arrived: dict[int, float] = {}
        self.ready = threading.Event()

    def run(self) -> None:
        try:
            while True:
                event = self.stream.next_event(timeout=120)
                if event is None:
                    return
                if event.event == "snapshot":
                    self.ready.set()
                    continue
                done = (event.data.get("progress") or {}).get("done")
                if isinstance(done, int):
                    # Changes within one poll interval arrive merged: an event carrying
                    # change n also delivers every change before it.
                    now = time.time()
                    for earlier in range(done, 0, -1):
                        if earlier in self.arrived:
                            break
                        self.arrived[earlier] = now
        except (OSError, TimeoutError, ValueError):
            return


def latency(port: int, clients: int, changes: int, auth: str) -> tuple[float, float, int]:
    run = DataFlowRunFactory(status=RunStatus.IN_PROGRESS, data_flow__name=uuid.uuid4().hex)
    readers = [Reader(port, f"/dataflows/api/runs/{run.pk}/events/", auth) for _ in range(clients)]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.ready.wait(30)
    time.sleep(1.0)  # the server's listener is subscribed
    committed: dict[int, float] = {}
    for done in range(1, changes + 1):
        DataFlowRun.objects.filter(pk=run.pk).update(progress={"done": done, "total": changes})
        committed[done] = time.time()
        time.sleep(0.03)
    time.sleep(2.0)
    DataFlowRun.objects.filter(pk=run.pk).update(status=RunStatus.SUCCESS)
    samples = [
        (reader.arrived[done] - committed[done]) * 1000
        for reader in readers
        for done in committed
        if done in reader.arrived
    ]
    for reader in readers:
        reader.join(10)
        reader.stream.close()
    missing = clients * changes - len(samples)
    return statistics.median(samples), percentile(samples, 0.95), missing


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def transactions() -> int:
    """Transactions the database has committed (each polling query is one)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        )
        return int(cursor.fetchone()[0])


def idle_cost(
    port: int, pid: int, clients: int, auth: str, seconds: float
) -> tuple[float, float, float]:
    """CPU (% of a core), RSS (MB) of the server and database transactions/s, ``clients`` idle."""
    run = DataFlowRunFactory(status=RunStatus.IN_PROGRESS)
    streams = [
        SSEClient(port, f"/dataflows/api/runs/{run.pk}/events/", cookie=auth)
        for _ in range(clients)
    ]
    for stream in streams:
        stream.next_event()
    time.sleep(1.0)
    cpu, commits, start = cpu_seconds(pid), transactions(), time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - start
    cpu_percent = (cpu_seconds(pid) - cpu) / elapsed * 100
    # Less this process's own query to read the counter.
    per_second = (transactions() - commits - 1) / elapsed
    memory = rss_mb(pid)
    for stream in streams:
        stream.close()
    DataFlowRun.objects.filter(pk=run.pk).update(status=RunStatus.SUCCESS)
    return cpu_percent, memory, per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--clients", default="1,100")
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    args = parser.parse_args()
    counts = [int(value) for value in args.clients.split(",")]
    ensure_database()
    DataFlow.objects.all().delete()  # the benchmark's own database: start empty
    auth = cookie()
    logs = Path(tempfile.mkdtemp(prefix="dataflows-bench-live-"))
    say(f"{args.changes} changes per case; SSE_POLL_INTERVAL {app_settings.SSE_POLL_INTERVAL} s")
    say(f"{'source':<14} {'clients':>7} {'median ms':>10} {'p95 ms':>8} {'missed':>7}")
    for name, path in SOURCES.items():
        use_source(path)
        env = {
            "DATAFLOWS_TEST_EVENTS": path,
            "DATAFLOWS_TEST_EVENTS_REDIS_URL": REDIS_URL,
            "DATAFLOWS_TEST_SSE_KEEPALIVE": "15",
            "DATAFLOWS_TEST_SSE_POLL_INTERVAL": "0.5",
        }
        process, port = server_process("uvicorn", logs / f"{name.replace('/', '-')}.log", **env)
        with process:
            for clients in counts:
                median, p95, missed = latency(port, clients, args.changes, auth)
                say(f"{name:<14} {clients:>7} {median:>10.1f} {p95:>8.1f} {missed:>7}")
            if name == "polling":
                pid = process.process.pid
                for clients in (0, 1, 100):
                    cpu, memory, per_second = idle_cost(port, pid, clients, auth, args.idle_seconds)
                    say(
                        f"  idle ASGI clients {clients:>3}: server CPU {cpu:5.1f} % of a core, "
                        f"RSS {memory:6.1f} MB, database transactions {per_second:5.1f}/s"
                    )
    use_source(SOURCES["polling"])


if __name__ == "__main__":
    main()
