"""A real browser drives the admin: log in, add a flow, run it with the action, open the run.

Needs Debian's ``chromium`` (``.ci/install-browser.sh`` installs it) and Playwright for
Python, which drives that binary; Playwright's own browser downloads are never used.
Screenshots of the pages go to ``test-artifacts/``, kept whether the test passes or not.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from django_dataflows.models import DataFlow, DataFlowRun, RunStatus
from tests.conftest import skip_or_fail

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
PASSWORD = "browser-test-password"


@pytest.fixture
def sync_playwright():
    if not CHROMIUM.exists():
        skip_or_fail(f"needs Chromium at {CHROMIUM}: run .ci/install-browser.sh")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        skip_or_fail("needs Playwright for Python (the pyproject test group)")
    return sync_playwright


def test_an_operator_adds_a_flow_runs_it_and_reads_the_run(
    live_server, django_user_model, sync_playwright
):
    django_user_model.objects.create_superuser("operator", "op@example.com", PASSWORD)
    ARTIFACTS.mkdir(exist_ok=True)

    # Playwright's sync API runs an asyncio loop on this thread while its block is open,
    # and Django refuses ORM calls from a thread with a running loop
    # (SynchronousOnlyOperation). Rather than set DJANGO_ALLOW_ASYNC_UNSAFE, this test
    # touches the database only before the block opens and after it closes; inside it,
    # only the live server's own thread (which has no loop) uses the database.
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(20_000)
        try:
            drive_the_admin(page, live_server.url)
        except BaseException:
            page.screenshot(path=ARTIFACTS / "admin-failure.png", full_page=True)
            raise
        finally:
            browser.close()

    data_flow = DataFlow.objects.get()
    assert (data_flow.name, data_flow.configuration) == ("browser-orders", {"label": "browser"})
    run = DataFlowRun.objects.get()
    assert (run.status, run.triggered_by.username) == (RunStatus.SUCCESS, "operator")


def drive_the_admin(page, base_url):
    from playwright.sync_api import expect

    page.goto(f"{base_url}/admin/login/?next=/admin/dataflows/dataflow/")
    page.fill("#id_username", "operator")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    expect(page.locator("#dataflows-heartbeat")).to_contain_text("never")

    page.click(".object-tools a.addlink")
    # The schedule-kind switch shows one kind's fields at a time.
    expect(page.locator(".field-cron")).to_be_hidden()
    page.check("input[name=schedule_kind][value=cron]")
    expect(page.locator(".field-cron")).to_be_visible()
    expect(page.locator(".field-timezone")).to_be_visible()
    expect(page.locator(".field-run_interval")).to_be_hidden()
    page.check("input[name=schedule_kind][value=interval]")
    expect(page.locator(".field-run_interval")).to_be_visible()
    page.fill("#id_name", "browser-orders")
    page.select_option("#id_flow", "tests.testapp.flows.CountRows")
    page.fill("#id_run_interval", "300")
    page.fill("#id_configuration", '{"label": "browser"}')
    page.click("input[name=_save]")

    expect(page.locator(".messagelist .success")).to_contain_text("was added successfully")
    row = page.locator("#result_list tbody tr", has_text="browser-orders")
    expect(row).to_contain_text("every 5 minutes")
    row.locator("input[name=_selected_action]").check()
    page.select_option("select[name=action]", "run_now")
    page.click("button[name=index]")

    # The page answers at once; the in-process backend runs the flow after sending it.
    message = page.locator(".messagelist .info")
    expect(message).to_contain_text(re.compile(r"“browser-orders”: run \d+ queued\."))

    message.locator("a").click()
    # The run page follows the run live until it has run.
    expect(page.locator("#dataflows-live-run [data-role=status]")).to_have_text("Success")
    page.reload()
    expect(page.locator(".field-status_display")).to_contain_text("Success")
    expect(page.locator(".field-result_display pre")).to_contain_text('"rows": 1')
    page.screenshot(path=ARTIFACTS / "admin-run-detail.png", full_page=True)

    page.click(".field-flow_link a")
    expect(page.locator("#dataflows-recent-runs tbody tr")).to_have_count(1)
    expect(page.locator("#dataflows-upcoming-runs li")).to_have_count(5)
    page.screenshot(path=ARTIFACTS / "admin-flow-change.png", full_page=True)

    page.goto(f"{base_url}/admin/dataflows/dataflow/")
    row = page.locator("#result_list tbody tr", has_text="browser-orders")
    expect(row.locator(".dataflows-badge")).to_have_text("Success")
    page.screenshot(path=ARTIFACTS / "admin-changelist.png", full_page=True)


# PostgreSQL only: on SQLite, the live server's threads share one connection, and a page that
# sends several admin requests at once can crash it (a segmentation fault in sqlite3).
@pytest.mark.postgres
def test_an_operator_reads_the_dependency_graph_and_the_backfills(
    live_server, django_user_model, sync_playwright
):
    import datetime

    from django.utils import timezone

    from tests.factories import DataFlowFactory

    django_user_model.objects.create_superuser("operator", "op@example.com", PASSWORD)
    ARTIFACTS.mkdir(exist_ok=True)
    orders = DataFlowFactory(name="import-orders")
    report = DataFlowFactory(name="orders-report", run_interval=None)
    report.upstream_flows.set([orders])
    reconcile = DataFlowFactory(name="reconcile", run_interval=None)
    reconcile.upstream_flows.set([orders, report])
    daily = DataFlowFactory(name="daily", cron="0 3 * * *", timezone="UTC", run_interval=None)
    today = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
    backfill = daily.backfill(today - datetime.timedelta(days=7), today)

    # The database is touched only outside Playwright's block (see the test above).
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(20_000)
        try:
            read_the_graph_and_backfills(page, live_server.url, backfill.pk)
        except BaseException:
            page.screenshot(path=ARTIFACTS / "admin-graph-failure.png", full_page=True)
            raise
        finally:
            browser.close()


def read_the_graph_and_backfills(page, base_url, backfill_pk):
    from playwright.sync_api import expect

    page.goto(f"{base_url}/admin/login/?next=/admin/dataflows/dataflow/")
    page.fill("#id_username", "operator")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")

    page.click("#dataflows-graph-link")
    graph = page.locator("#dataflows-graph svg")
    expect(graph).to_be_visible()
    expect(graph.locator("a.dataflows-graph-node")).to_have_count(3)
    expect(graph.locator("line.dataflows-graph-edge")).to_have_count(3)
    expect(page.locator("#content-main")).to_contain_text("1 flow without dependencies")
    # Drawn in columns: the import left of the report, the report left of the reconciliation.
    xs = [
        graph.locator(f'a[data-flow="{name}"] rect').bounding_box()["x"]
        for name in ("import-orders", "orders-report", "reconcile")
    ]
    assert xs == sorted(xs), xs
    assert len(set(xs)) == 3, xs
    page.screenshot(path=ARTIFACTS / "admin-graph.png", full_page=True)

    graph.locator('a[data-flow="import-orders"]').click()
    expect(page.locator(".field-downstream_display")).to_contain_text("orders-report")
    expect(page.locator(".field-downstream_display")).to_contain_text("reconcile")

    page.goto(f"{base_url}/admin/dataflows/backfill/")
    row = page.locator("#result_list tbody tr", has_text="daily")
    expect(row.locator("progress")).to_have_attribute("max", "7")
    expect(row).to_contain_text("0 of 7 slots")
    expect(row).to_contain_text("Running")
    page.screenshot(path=ARTIFACTS / "admin-backfills.png", full_page=True)
    row.locator("input[name=_selected_action]").check()
    page.select_option("select[name=action]", "cancel_backfills")
    page.click("button[name=index]")
    expect(page.locator(".messagelist .success")).to_contain_text("1 backfills cancelled")
    expect(row).to_contain_text("Cancelled")

    # A flow without a schedule: the switch hides both kinds' fields.
    page.goto(f"{base_url}/admin/dataflows/dataflow/add/")
    page.check("input[name=schedule_kind][value=none]")
    expect(page.locator(".field-run_interval")).to_be_hidden()
    expect(page.locator(".field-cron")).to_be_hidden()
    expect(page.locator(".field-catchup")).to_be_hidden()
    assert backfill_pk
