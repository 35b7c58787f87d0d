"""Count the database writes of one run, plain and stepped, on PostgreSQL (query log).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/dataflows_bench_writes \\
        python bench/run_writes.py

A run is started the way "Run now" starts it (``trigger_run`` with the in-process backend)
and every SQL statement it sends is captured. Writes (INSERT, UPDATE, DELETE) are counted
per table, for a flow without steps and for flows of 1, 3 and 10 declared steps whose
steps do nothing (so every write counted is the app's own bookkeeping). Printed, never
asserted. The target: a plain run writes what it wrote before steps existed; a stepped run
adds at most two writes per step.

Writes made inside the database by the trigger of migration 0003 (each step write also
stamps its run's ``updated_at``) are not statements the app sends; they are not counted.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from typing import Any

from common import ensure_database, say, setup_django

setup_django("postgres://postgres@127.0.0.1:5432/dataflows_bench_writes")

from django.db import connection  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

from django_dataflows import Flow  # noqa: E402
from django_dataflows.models import DataFlow, DataFlowRun  # noqa: E402

WRITE = re.compile(r'^\s*(INSERT INTO|UPDATE|DELETE FROM)\s+"?(\w+)"?', re.IGNORECASE)
STEP_COUNTS = (1, 3, 10)


class PlainFlow(Flow):
    """No steps: returns at once."""

    def run(self) -> dict[str, int]:
        return {"rows": 0}


def stepped_flow(count: int) -> type[Flow]:
    """A flow class with ``count`` declared steps that do nothing."""
    names = tuple(f"step_{i}" for i in range(1, count + 1))
    methods: dict[str, Any] = {name: (lambda self: {"ok": True}) for name in names}
    return type(f"Stepped{count}", (Flow,), {"steps": names, "__module__": __name__, **methods})


def writes_of_one_run(flow_class: type[Flow]) -> tuple[Counter[str], int]:
    """Per-table writes and the number of statements of all kinds, for one run."""
    data_flow, _created = DataFlow.objects.get_or_create(
        name=f"bench-writes-{flow_class.__name__}",
        defaults={"flow": flow_class.flow_path(), "run_interval": 3600},
    )
    DataFlowRun.objects.filter(data_flow=data_flow).delete()
    with CaptureQueriesContext(connection) as captured:
        run = data_flow.trigger_run()
    assert run.status == "success", (run.status, run.error_message)
    writes: Counter[str] = Counter()
    for query in captured.captured_queries:
        match = WRITE.match(query["sql"])
        if match:
            writes[match.group(2).removeprefix("dataflows_")] += 1
    return writes, len(captured.captured_queries)


def describe(writes: Counter[str]) -> str:
    return ", ".join(f"{table} {count}" for table, count in sorted(writes.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, nargs="*", default=list(STEP_COUNTS))
    args = parser.parse_args()
    ensure_database()
    say(f"Database: {connection.settings_dict['NAME']} ({connection.vendor})")

    plain, plain_statements = writes_of_one_run(PlainFlow)
    base = sum(plain.values())
    say(f"plain run:        {base:3d} writes ({describe(plain)}); {plain_statements} statements")
    for count in args.steps:
        writes, statements = writes_of_one_run(stepped_flow(count))
        total = sum(writes.values())
        extra = total - base
        say(
            f"{count:2d}-step run:      {total:3d} writes ({describe(writes)}); "
            f"{statements} statements; {extra} more than plain = {extra / count:.2f} per step"
        )
    DataFlow.objects.filter(name__startswith="bench-writes-").delete()


if __name__ == "__main__":
    main()
