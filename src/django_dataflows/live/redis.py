"""Live status by Redis pub/sub (the ``redis`` extra), for many app servers.

Writers publish the ids of the runs they changed once their transaction has committed
(through the ``runs_changed`` signal). Each process holds one subscription while it has
open streams: under ASGI an asyncio task on redis-py's asyncio client (no thread), under
WSGI one thread. It loads each announced run once and hands it to every stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
from typing import Any

from django.core.checks import CheckMessage, Error

from django_dataflows.conf import app_settings
from django_dataflows.live.base import (
    LOOKBACK,
    EventSource,
    Listener,
    ThreadListener,
    database_now,
    in_pool_thread,
    load_changed_since,
    load_run_ids,
)

logger = logging.getLogger("django_dataflows.live")

CHANNEL = "dataflows:runs"


def split_ids(data: bytes | str) -> set[int]:
    text = data.decode() if isinstance(data, bytes) else data
    return {int(part) for part in text.split(",") if part.isdigit()}


class ThreadRedisListener(ThreadListener):
    """The subscription under WSGI: one thread per process."""

    name = "redis"

    def listen(self) -> None:
        import redis

        started = database_now()
        client: Any = redis.Redis.from_url(app_settings.EVENTS_REDIS_URL)
        self.client = client
        self.pubsub: Any = client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(CHANNEL)
        self.catch_up(started)
        while not self.stopping.is_set():
            message = self.pubsub.get_message(timeout=0.5)
            if message and message["type"] == "message":
                self.source.deliver(load_run_ids(split_ids(message["data"])))

    def cleanup(self) -> None:
        pubsub = getattr(self, "pubsub", None)
        if pubsub is not None:
            with contextlib.suppress(Exception):
                pubsub.unsubscribe()
            pubsub.close()
            self.client.close()


class AsyncRedisListener(Listener):
    """The subscription under ASGI: an asyncio task on the server's event loop."""

    #: Seconds between two looks at :attr:`stopping` while no message comes.
    wake = 1.0

    def __init__(self, source: EventSource, loop: asyncio.AbstractEventLoop) -> None:
        self.source = source
        self.stopping = False
        # A context of its own: the task outlives the request whose stream started it.
        self.task = loop.create_task(
            self._main(), name="dataflows-live-redis", context=contextvars.Context()
        )

    def stop(self) -> None:
        # The flag as well as the cancellation: on Python 3.11 a cancellation can be lost
        # inside the client's reads, and the task would then hold its subscription forever.
        self.stopping = True
        self.task.cancel()

    async def _main(self) -> None:
        while not self.stopping:
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("Live status Redis subscription failed; retrying")
                await asyncio.sleep(1.0)

    async def _listen(self) -> None:
        import redis.asyncio

        started = await in_pool_thread(database_now)
        client: Any = redis.asyncio.Redis.from_url(app_settings.EVENTS_REDIS_URL)
        pubsub: Any = client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(CHANNEL)
            # What was published before the subscription took effect is read back.
            self.source.deliver(await in_pool_thread(load_changed_since, started - LOOKBACK))
            while not self.stopping:
                message = await pubsub.get_message(timeout=self.wake)
                if message is not None and message["type"] == "message":
                    states = await in_pool_thread(load_run_ids, split_ids(message["data"]))
                    self.source.deliver(states)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.unsubscribe()
            await pubsub.aclose()
            await client.aclose()


class RedisEvents(EventSource):
    """Redis pub/sub at ``DATAFLOWS["EVENTS_REDIS_URL"]``."""

    publishes = True

    def __init__(self) -> None:
        super().__init__()
        self._client: Any = None
        self._client_lock = threading.Lock()

    def start_listener(self) -> Listener:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return ThreadRedisListener(self)
        return AsyncRedisListener(self, loop)

    def publish(self, run_ids: list[int]) -> None:
        import redis

        with self._client_lock:
            if self._client is None:
                self._client = redis.Redis.from_url(
                    app_settings.EVENTS_REDIS_URL, socket_connect_timeout=2, socket_timeout=5
                )
            client = self._client
        try:
            client.publish(CHANNEL, ",".join(str(pk) for pk in run_ids))
        except redis.RedisError:
            # Live status is a view: a Redis outage never fails the write it reports.
            logger.exception("Could not publish run changes %s to Redis", run_ids)

    @classmethod
    def check(cls) -> list[CheckMessage]:
        try:
            import redis
        except ImportError:
            return [
                Error(
                    "DATAFLOWS['EVENTS'] is RedisEvents but redis-py is not installed.",
                    hint="pip install 'django-dataflows[redis]'",
                    id="dataflows.E053",
                )
            ]
        try:
            parse_url: Any = redis.connection.parse_url
            parse_url(app_settings.EVENTS_REDIS_URL)
        except ValueError as exc:
            return [Error(f"DATAFLOWS['EVENTS_REDIS_URL'] is invalid: {exc}", id="dataflows.E053")]
        return []
