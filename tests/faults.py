"""Real processes to break, for the fault tests (``tests/test_faults.py``).

- :class:`RedisServer`: our own ``redis-server`` on a spare port (never the shared 6379),
  without persistence, so that killing it loses what it held, as in production.
- :class:`AppServer`: gunicorn serving ``tests.wsgi`` with settings from the environment.
- :func:`post_heartbeat`: a plain HTTP POST, as cron's ``curl`` would send.
- :func:`inject_publish_fault`: a Celery ``before_task_publish`` receiver that sends a
  signal (SIGKILL, SIGSTOP) to a process just before the n-th run is published, so a broker
  dies or freezes at an exact point of a heartbeat's batch.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.async_workers import ROOT, WorkerProcess, wait_for

#: What ``before_task_publish`` counts in this process (a server's sync worker).
_published = {"runs": 0}


def spare_port() -> int:
    """A TCP port nobody listens on now (the kernel's choice, so never 6379 in practice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    assert port != 6379
    return port


class RedisServer:
    """A ``redis-server`` of our own, with no persistence: a kill loses its messages."""

    def __init__(self, log_dir: Path) -> None:
        self.port = spare_port()
        self.log_dir = log_dir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            raise RuntimeError("redis-server is not installed")
        argv = [executable, "--port", str(self.port), "--bind", "127.0.0.1"]
        argv += ["--save", "", "--appendonly", "no", "--dir", str(self.log_dir)]
        with (self.log_dir / f"redis-{self.port}.log").open("ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        wait_for(self.answers, what=f"redis-server on port {self.port}")

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """``kill -9``: everything it held is gone."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            self.process.wait()
            self.process = None

    def resume(self) -> None:
        """``kill -CONT`` after a ``SIGSTOP``."""
        os.kill(self.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGCONT)
        self.kill()


@dataclass
class Answer:
    """A heartbeat's HTTP answer."""

    status: int
    content_type: str
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


def post_heartbeat(port: int, *, timeout: float = 60.0) -> Answer:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/dataflows/heartbeat/", b"")
    """POST the heartbeat; a connection the server dropped is an answer with status 0."""
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            body = response.read().decode()
            return Answer(response.status, response.headers["Content-Type"], body)
    except urllib.error.HTTPError as error:
        return Answer(error.code, error.headers["Content-Type"] or "", error.read().decode())
    except (urllib.error.URLError, ConnectionError, http.client.HTTPException) as error:
        return Answer(0, "", repr(error))


class AppServer(WorkerProcess):
    """gunicorn serving ``tests.wsgi:application`` on a spare port, sync workers."""

    def __init__(
        self,
        log_path: Path,
        *,
        workers: int = 1,
        timeout: int = 30,
        settings: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.port = spare_port()
        argv = [
            sys.executable,
            "-m",
            "gunicorn",
            "tests.wsgi:application",
            f"--bind=127.0.0.1:{self.port}",
            f"--workers={workers}",
            f"--timeout={timeout}",
            "--graceful-timeout=1",
        ]
        full_env = {
            "DATAFLOWS_TEST_SETTINGS": json.dumps(dict(settings or {})),
            "DATAFLOWS_TEST_LOG": "1",
            **(env or {}),
        }
        super().__init__(
            "gunicorn", argv, log_path=log_path, ready_marker="Booting worker", env=full_env
        )
        self.workers = workers

    def _ready(self) -> bool:
        return super()._ready() and len(self.worker_pids()) >= self.workers

    def worker_pids(self) -> list[int]:
        return [int(pid) for pid in re.findall(r"Booting worker with pid: (\d+)", self.log())]

    def heartbeat(self, *, timeout: float = 60.0) -> Answer:
        return post_heartbeat(self.port, timeout=timeout)


def server_env(database_url: str, **extra: str) -> dict[str, str]:
    return {"DATABASE_URL": database_url, "PYTHONPATH": str(ROOT), **extra}


def inject_publish_fault(sender: object = None, headers: Any = None, **kwargs: Any) -> None:
    """Before the n-th run is published, send a signal to a process (a broker).

    Armed by ``DATAFLOWS_TEST_PUBLISH_FAULT="SIGNAL:PID:N"`` in the sending process.
    """
    spec = os.environ.get("DATAFLOWS_TEST_PUBLISH_FAULT")
    if not spec or (headers or {}).get("task") != "django_dataflows.run_data_flow":
        return
    name, pid, nth = spec.split(":")
    _published["runs"] += 1
    if _published["runs"] == int(nth):
        os.kill(int(pid), getattr(signal, name))
