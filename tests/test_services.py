"""The rule that turns a missing service into a failure under DATAFLOWS_REQUIRE_SERVICES=1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

A_REDIS_TEST = """
import pytest

@pytest.mark.redis
def test_needs_redis():
    pass
"""


def run_alone(tmp_path: Path, require: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_alone.py").write_text(A_REDIS_TEST)
    # The suite's own fixtures, autouse ones included.
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["tests.conftest"]\n')
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATAFLOWS_REQUIRE_SERVICES": require,
        "DATAFLOWS_TEST_BROKER_URL": "redis://127.0.0.1:1/5",  # nobody listens there
    }
    env.pop("DATABASE_URL", None)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-c",
            str(ROOT / "pyproject.toml"),
            "--rootdir",
            str(tmp_path),
            str(tmp_path / "test_alone.py"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("require", "returncode", "says"), [("1", 1, "forbids skipping"), ("", 0, "1 skipped")]
)
def test_a_redis_test_without_redis_is_skipped_or_failed_as_for_postgres(
    tmp_path, require, returncode, says
):
    completed = run_alone(tmp_path, require)

    assert completed.returncode == returncode, completed.stdout + completed.stderr
    assert says in completed.stdout
