"""Live status under pressure, against real uvicorn processes on PostgreSQL: memory,
stream cleanup, and the reconnect burst after a restart.

**Memory:** 40 runs with 1 MB inputs keep changing; 5 clients replay ``events/`` from
``Last-Event-ID: 1`` and read on, 5 connect and never read (default limits). Prints the
server's resident memory before, at its peak and after, and what the never-reading
clients' queues did. Before the limits this took a server from 179 MB to 1.37 GB.
**Cleanup:** 1,000 connect/read/leave cycles per source (polling, Redis) while a run
changes; prints the time taken and what the server still holds once they have left
(nothing, when every stream ended). The server runs on this interpreter: run the script
with each Python (e.g. a tox environment's) to compare them.
**Restart:** 300 clients watch a run, the server restarts, they all reconnect at once with
``Last-Event-ID``; prints outcomes and the peak database connections.

Figures are printed, never asserted; the load average is printed with them.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/dataflows_live_memory_bench \\
        .venv/bin/python bench/live_memory.py [--cycles 1000] [--burst 300] [--only cleanup]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from common import ensure_database, say, setup_django

setup_django("postgres://postgres@127.0.0.1:5432/dataflows_live_memory_bench")

from django.test import Client  # noqa: E402
from tests.async_workers import wait_for  # noqa: E402
from tests.factories import UserFactory  # noqa: E402
from tests.live_scenarios import (  # noqa: E402
    REDIS,
    REDIS_URL,
    big_runs,
    cycles,
    idle_state,
    restart_burst,
    scenario,
    wait_until_idle,
)
from tests.sse import remote_connections, server_process  # noqa: E402

from django_dataflows.models import DataFlow, DataFlowRun  # noqa: E402

MB = 1024 * 1024
POLLING = "django_dataflows.live.polling.PollingEvents"


def load() -> str:
    return f"load average {os.getloadavg()[0]:.2f}"


def cookie() -> str:
    client = Client()
    UserFactory._meta.django_get_or_create = ("username",)
    client.force_login(UserFactory(username="bench", is_staff=True, is_superuser=True))
    return f"sessionid={client.cookies['sessionid'].value}"


def memory(logs: Path, session: str) -> None:
    process, port = server_process("uvicorn", logs / "memory.log", DATAFLOWS_TEST_SETTINGS="{}")
    ids = big_runs(40)
    with process:
        started = time.perf_counter()
        outcome = scenario(process.process.pid, port, session, ids)
        elapsed = time.perf_counter() - started
    say(f"\nMemory under uvicorn ({load()}), 40 runs with 1 MB inputs changing:")
    growth = (outcome.peak - outcome.before) / MB
    say(
        f"  server RSS before {outcome.before / MB:.0f} MB, peak {outcome.peak / MB:.0f} MB "
        f"(+{growth:.0f} MB), after {outcome.after / MB:.0f} MB"
    )
    say(
        f"  5 never-reading clients: {outcome.resyncs} queue overflows into a resync, "
        f"{outcome.dropped} batches not kept; 5 replaying clients read "
        f"{sum(outcome.replayed)} events; {elapsed:.0f} s until every queue had overflowed"
    )
    say("  (before the limits: 179 MB -> 1.37 GB, and 1.25 GB after)")
    DataFlowRun.objects.filter(pk__in=ids).delete()


def cleanup(logs: Path, session: str, count: int) -> None:
    say(f"\nCleanup under uvicorn on Python {platform.python_version()} ({load()}):")
    for label, source in (("polling", POLLING), ("redis", REDIS)):
        process, port = server_process(
            "uvicorn",
            logs / f"cleanup-{label}.log",
            DATAFLOWS_TEST_EVENTS=source,
            DATAFLOWS_TEST_EVENTS_REDIS_URL=REDIS_URL,
            DATAFLOWS_TEST_SSE_POLL_INTERVAL="0.02",
        )
        with process:
            idle = idle_state(port)
            started = time.perf_counter()
            cycles(port, session, source, count)
            elapsed = time.perf_counter() - started
            try:
                wait_for(wait_until_idle(port, idle), timeout=60, what="every stream to end")
                settled = "all ended"
            except TimeoutError:
                left = idle_state(port)
                settled = (
                    f"LEFT: {left['subscribers']} subscribers, listening={left['listening']}, "
                    f"threads={left['threads']}, tasks={left['live_tasks']}, "
                    f"{left['tasks'] - idle['tasks']} request tasks"
                )
            pid = process.process.pid
            redis, postgres = remote_connections(pid, 6379), remote_connections(pid, 5432)
            held = f"redis {redis}, postgres {postgres}"
            say(f"  {label:8} {count} cycles in {elapsed:5.1f} s: {settled}; connections: {held}")


def restart(logs: Path, session: str, clients: int) -> None:
    process, port = server_process("uvicorn", logs / "restart.log", DATAFLOWS_TEST_SETTINGS="{}")
    with process:
        started = time.perf_counter()
        reconnected = restart_burst(process, port, session, clients)
        elapsed = time.perf_counter() - started
    counts: dict[str, int] = {}
    for status, event, _data in reconnected.outcomes:
        key = f"{status} {event}"[:60]
        counts[key] = counts.get(key, 0) + 1
    say(f"\nRestart burst under uvicorn ({load()}): {clients} clients reconnect at once")
    say(f"  outcomes: {json.dumps(counts)}; {elapsed:.1f} s from restart to the last event")
    say(
        f"  peak database connections of the server: {reconnected.peak_connections} "
        "(SSE_DB_CONNECTIONS = 4, plus the poller and closing backends)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=1000, help="cleanup cycles per source")
    parser.add_argument("--burst", type=int, default=300, help="clients reconnecting at once")
    parser.add_argument("--only", choices=["memory", "cleanup", "restart"])
    options = parser.parse_args()
    ensure_database()
    DataFlowRun.objects.all().delete()
    DataFlow.objects.all().delete()
    session = cookie()
    logs = Path(tempfile.mkdtemp(prefix="dataflows-live-memory-"))
    if options.only in (None, "memory"):
        memory(logs, session)
    if options.only in (None, "cleanup"):
        cleanup(logs, session, options.cycles)
    if options.only in (None, "restart"):
        restart(logs, session, options.burst)
    say(f"\nServer logs: {logs}")


if __name__ == "__main__":
    main()
