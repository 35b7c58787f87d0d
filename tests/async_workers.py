"""Worker processes for the asynchronous backends' tests and benchmark.

A :class:`WorkerProcess` is a real ``celery worker`` or ``manage.py db_worker`` started as a
subprocess in its own process group, with its output in a log file. ``start()`` returns once
the worker says it is ready; ``stop()`` ends the whole group for sure (SIGTERM, then
SIGKILL), so a prefork worker's children go too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

from django.db import connection

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def worker_database_url() -> str:
    """A ``DATABASE_URL`` naming the database this process uses (the test database in tests)."""
    db = connection.settings_dict
    user = quote(db["USER"] or "", safe="")
    password = f":{quote(db['PASSWORD'], safe='')}" if db.get("PASSWORD") else ""
    host = db["HOST"] or "127.0.0.1"
    port = db["PORT"] or 5432
    return f"postgres://{user}{password}@{host}:{port}/{db['NAME']}"


#: Seconds a condition may take to come true on a loaded machine before a test gives up.
PATIENCE = 60.0


def wait_for(
    probe: Callable[[], T | None],
    *,
    timeout: float = PATIENCE,
    interval: float = 0.05,
    what: str = "",
) -> T:
    """Poll ``probe`` until it returns something other than ``None``/``False``; return that.

    ``timeout`` only bounds a wait that would otherwise never end: the test is decided by
    the condition, so the bound is generous (a loaded machine is slow, not wrong).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"Gave up after {timeout:.0f} s waiting for {what or probe}.")
        time.sleep(interval)


class WorkerProcess:
    """One worker subprocess; use as a context manager or call ``start()``/``stop()``."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        log_path: Path,
        ready_marker: str,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.ready_marker = ready_marker
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "DATAFLOWS_TEST_WORKER": name,
            **(env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> WorkerProcess:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self, timeout: float = 60.0) -> None:
        """Launch the worker and wait until it is ready."""
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        """Launch the worker without waiting (start several, then ``wait_ready()`` on each)."""
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 60.0) -> None:
        try:
            wait_for(self._ready, timeout=timeout, interval=0.1, what=f"worker {self.name}")
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(
                f"Worker {self.name} exited with {self.process.returncode}:\n{self.log()}"
            )
        return self.ready_marker in self.log()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_exit(self, timeout: float = 60.0) -> int:
        """Wait for a worker that ends by itself (``--batch``); return its exit code."""
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        finally:
            self.stop()

    def stop(self, timeout: float = 15.0) -> None:
        """Warm shutdown (SIGTERM to the group), then SIGKILL to whatever is left."""
        process, self.process = self.process, None
        if process is None:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, timeout)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # The group may outlive its leader for a moment (prefork children).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def celery_worker(
    name: str,
    queues: list[str],
    log_path: Path,
    *,
    pool: str = "solo",
    loglevel: str = "INFO",
    **env: str,
) -> WorkerProcess:
    """A worker of ``tests.celery_app`` consuming ``queues`` with one process."""
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "tests.celery_app",
        "worker",
        f"--pool={pool}",
        "-c",
        "1",
        "-Q",
        ",".join(queues),
        "-n",
        f"{name}-{os.getpid()}@%h",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        f"--loglevel={loglevel}",
    ]
    # Celery logs "<name>@<host> ready." at INFO. Above INFO only the start-up banner shows
    # (before the broker connection): send a task and wait for it to know the worker is up.
    marker = " ready." if loglevel == "INFO" else "[queues]"
    return WorkerProcess(name, argv, log_path=log_path, ready_marker=marker, env=env)


def tasks_db_worker(
    name: str, queues: list[str], log_path: Path, *, batch: bool = False, **env: str
) -> WorkerProcess:
    """``manage.py db_worker`` of django-tasks-db, polling ``queues`` every 0.1 s."""
    argv = [
        sys.executable,
        "-m",
        "django",
        "db_worker",
        f"--queue-name={','.join(queues)}",
        "--interval=0.1",
        "--no-startup-delay",
        "--no-reload",
        f"--worker-id={name}",
        "--verbosity=2",
    ]
    if batch:
        argv.append("--batch")
    return WorkerProcess(name, argv, log_path=log_path, ready_marker="Starting worker", env=env)
