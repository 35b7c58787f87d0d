"""A real browser watches runs live: the run page and "Live runs" change as the run
moves, without a reload; the dashboard draws its charts. Screenshots go to
``test-artifacts/`` (see ``tests/test_admin_browser.py`` for the Chromium set-up)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta

import pytest
from django.db import connection
from django.db.models.functions import Now
from django.utils import timezone

from django_dataflows.models import DataFlowRun, DataFlowRunStep, RunStatus, StepStatus
from tests.async_workers import wait_for
from tests.factories import DataFlowFactory, DataFlowRunFactory
from tests.test_admin_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, PASSWORD, sync_playwright

pytestmark = pytest.mark.slow
__all__ = ["sync_playwright"]  # the fixture, shared with the admin's browser test


def in_thread(change: Callable[[], object]) -> None:
    """Write to the database from a thread without an event loop (Playwright runs one here)."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            change()
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(30)
    if errors:
        raise errors[0]


@pytest.fixture
def live_settings(settings):
    settings.DATAFLOWS = {**settings.DATAFLOWS, "SSE_KEEPALIVE": 1, "SSE_POLL_INTERVAL": 0.2}


def test_an_operator_watches_a_run_and_the_live_runs_page_change(
    live_server, django_user_model, sync_playwright, live_settings
):
    django_user_model.objects.create_superuser("operator", "op@example.com", PASSWORD)
    run = DataFlowRunFactory(status=RunStatus.PENDING, data_flow__name="orders-live")
    steps = [
        DataFlowRunStep.objects.create(run=run, position=position, name=name)
        for position, name in ((1, "extract"), (2, "load"))
    ]
    other_flow = DataFlowFactory(name="invoices-live")
    week_ago = timezone.now() - timedelta(days=2)
    for status, duration in ((RunStatus.SUCCESS, 1200), (RunStatus.FAILED, 3400)):
        DataFlowRunFactory(
            data_flow=other_flow,
            status=status,
            created_at=week_ago,
            started_at=week_ago,
            ended_at=week_ago + timedelta(milliseconds=duration),
        )
    ARTIFACTS.mkdir(exist_ok=True)

    def start() -> None:
        DataFlowRun.objects.filter(pk=run.pk).update(
            status=RunStatus.IN_PROGRESS, progress={"done": 1, "total": 2, "message": "batches"}
        )
        DataFlowRunStep.objects.filter(pk=steps[0].pk).update(status=StepStatus.IN_PROGRESS)

    def finish() -> None:
        DataFlowRunStep.objects.filter(run=run).update(
            status=StepStatus.SUCCESS, started_at=Now(), ended_at=Now()
        )
        DataFlowRun.objects.filter(pk=run.pk).update(
            status=RunStatus.SUCCESS, progress={"done": 2, "total": 2}
        )

    def new_run() -> None:
        DataFlowRunFactory(data_flow=other_flow, status=RunStatus.PENDING)

    def other_run_starts() -> None:
        DataFlowRun.objects.filter(data_flow=other_flow, status=RunStatus.PENDING).update(
            status=RunStatus.IN_PROGRESS, progress={"done": 7}
        )

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(20_000)
        try:
            watch(page, live_server.url, run.pk, start, finish, new_run, other_run_starts)
        except BaseException:
            page.screenshot(path=ARTIFACTS / "live-failure.png", full_page=True)
            raise
        finally:
            browser.close()
    # The live server's streams notice the browser left at their next keep-alive; then
    # its poller stops and closes its database connection (the test database is dropped
    # at the end of the session).
    wait_for(
        lambda: (
            not any(thread.name.startswith("dataflows-live") for thread in threading.enumerate())
        ),
        timeout=20,
        what="the live server's poller to stop",
    )


def watch(page, base_url, run_id, start, finish, new_run, other_run_starts) -> None:
    from playwright.sync_api import expect

    page.goto(f"{base_url}/admin/login/?next=/admin/dataflows/dataflowrun/{run_id}/change/")
    page.fill("#id_username", "operator")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")

    panel = page.locator("#dataflows-live-run")
    expect(panel.locator("[data-role=status]")).to_have_text("Pending")
    expect(panel.locator("[data-role=connection]")).to_have_text("live")
    page.evaluate("window.dataflowsNotReloaded = true")

    in_thread(start)
    expect(panel.locator("[data-role=status]")).to_have_text("In progress")
    expect(panel.locator("[data-role=progress-text]")).to_have_text("1 / 2 batches")
    expect(panel.locator("tr[data-position='1'] .dataflows-badge")).to_have_text("In progress")
    page.screenshot(path=ARTIFACTS / "live-run-in-progress.png", full_page=True)

    in_thread(finish)
    expect(panel.locator("[data-role=status]")).to_have_text("Success")
    expect(panel.locator("tr[data-position='2'] .dataflows-badge")).to_have_text("Success")
    assert page.evaluate("window.dataflowsNotReloaded") is True  # changed in place
    page.screenshot(path=ARTIFACTS / "live-run-finished.png", full_page=True)

    page.goto(f"{base_url}/admin/dataflows/dataflowrun/live/")
    table = page.locator("#dataflows-live-runs")
    expect(table.locator("[data-role=empty]")).to_be_visible()
    expect(page.locator("[data-role=connection]")).to_have_text("live")
    page.evaluate("window.dataflowsNotReloaded = true")
    in_thread(new_run)
    row = table.locator("tbody tr", has_text="invoices-live")
    expect(row.locator(".dataflows-badge")).to_have_text("Pending")
    in_thread(other_run_starts)
    expect(row.locator(".dataflows-badge")).to_have_text("In progress")
    expect(row).to_contain_text("7")
    assert page.evaluate("window.dataflowsNotReloaded") is True
    page.screenshot(path=ARTIFACTS / "live-runs.png", full_page=True)

    page.goto(f"{base_url}/admin/dataflows/dataflowrun/dashboard/")
    # One bar segment per run here: the two of two days ago and the two watched above.
    expect(page.locator("#dataflows-chart-week svg.dataflows-chart rect")).to_have_count(4)
    expect(page.locator("#dataflows-chart-duration svg")).to_contain_text("invoices-live")
    expect(page.locator("#dataflows-chart-success svg")).to_contain_text("50 %")
    page.screenshot(path=ARTIFACTS / "live-dashboard.png", full_page=True)
