"""A view the real-server tests read the live layer's state through (test URLs only).

``GET /test/live-state/`` answers what this server process holds for live status right
now: the event source's subscribers and whether its listener runs, the live threads
(poller, Redis subscription under WSGI), the live asyncio tasks (Redis subscription under
ASGI), under ASGI how many other tasks the event loop has (a request's tasks end with
its stream), and how often the clients' queues overflowed (``resyncs``, ``dropped``).
"""

from __future__ import annotations

import asyncio
import threading

from django.http import HttpRequest, JsonResponse

from django_dataflows.live import get_event_source
from django_dataflows.live.streams import queue_counters


async def live_state(request: HttpRequest) -> JsonResponse:
    source = get_event_source()
    current = asyncio.current_task()
    tasks = [task for task in asyncio.all_tasks() if task is not current and not task.done()]
    return JsonResponse(
        {
            "subscribers": source.subscriber_count,
            "listening": source.listening,
            "threads": sorted(
                thread.name
                for thread in threading.enumerate()
                if thread.name.startswith("dataflows-live")
            ),
            "live_tasks": sorted(
                task.get_name() for task in tasks if task.get_name().startswith("dataflows-live")
            ),
            "tasks": len(tasks),
            "resyncs": queue_counters.resyncs,
            "dropped": queue_counters.dropped,
        }
    )
