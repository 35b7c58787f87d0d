"""Owners and the audit trail: who sees and steers which flow, and who changed what."""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.contrib.auth.models import AnonymousUser, Permission
from django.core.management import CommandError, call_command
from django.db import transaction
from django.test import RequestFactory
from rest_framework.exceptions import ValidationError
from rest_framework.test import APIClient

from django_dataflows import audit
from django_dataflows.api.filters import owner_id
from django_dataflows.models import (
    AuditAction,
    AuditEntry,
    AuditSource,
    DataFlow,
    DataFlowRun,
    RunStatus,
    RunTrigger,
)
from tests.factories import DataFlowFactory, DataFlowRunFactory, UserFactory

pytestmark = pytest.mark.django_db

API = "/dataflows/api/"


def grant(user: Any, *codenames: str) -> Any:
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return type(user).objects.get(pk=user.pk)


def api_as(user: Any) -> APIClient:
    api = APIClient()
    api.force_authenticate(user)
    return api


@pytest.fixture
def alice() -> Any:
    return UserFactory(username="alice")


@pytest.fixture
def bob() -> Any:
    return UserFactory(username="bob")


@pytest.fixture
def flows(alice: Any, bob: Any) -> tuple[DataFlow, DataFlow]:
    return (
        DataFlowFactory(name="alice-flow", owner=alice),
        DataFlowFactory(name="bob-flow", owner=bob),
    )


# -- scoping -------------------------------------------------------------------------------


def test_an_owner_lists_only_their_flows(alice, flows):
    response = api_as(alice).get(f"{API}flows/")
    assert response.status_code == 200
    assert [flow["name"] for flow in response.json()["results"]] == ["alice-flow"]


def test_another_owners_flow_answers_404(alice, flows):
    response = api_as(alice).get(f"{API}flows/{flows[1].pk}/")
    assert response.status_code == 404
    assert "bob-flow" not in response.content.decode()


def test_a_user_with_the_view_permission_sees_every_flow(flows):
    viewer = grant(UserFactory(), "view_dataflow")
    response = api_as(viewer).get(f"{API}flows/")
    assert {flow["name"] for flow in response.json()["results"]} == {"alice-flow", "bob-flow"}


def test_an_owner_lists_only_their_runs(alice, flows):
    mine = DataFlowRunFactory(data_flow=flows[0])
    DataFlowRunFactory(data_flow=flows[1])
    response = api_as(alice).get(f"{API}runs/")
    assert [run["id"] for run in response.json()["results"]] == [mine.pk]


def test_overall_stats_count_only_the_owners_runs(alice, flows):
    DataFlowRunFactory(data_flow=flows[0])
    DataFlowRunFactory.create_batch(2, data_flow=flows[1])
    response = api_as(alice).get(f"{API}stats/")
    assert response.json()["total"] == 1


def test_an_owner_edits_and_starts_their_flow(alice, flows):
    api = api_as(alice)
    assert api.patch(f"{API}flows/{flows[0].pk}/", {"description": "mine"}).status_code == 200
    assert api.post(f"{API}flows/{flows[0].pk}/start/").status_code == 202


def test_without_owners_manage_own_flows_an_owner_only_looks(alice, flows, settings):
    settings.DATAFLOWS = {"OWNERS_MANAGE_OWN_FLOWS": False}
    api = api_as(alice)
    assert api.get(f"{API}flows/{flows[0].pk}/").status_code == 200
    assert api.post(f"{API}flows/{flows[0].pk}/start/").status_code == 403
    assert not flows[0].runs.exists()


def test_an_owner_cannot_delete_their_flow_without_the_delete_permission(alice, flows):
    assert api_as(alice).delete(f"{API}flows/{flows[0].pk}/").status_code == 403
    assert DataFlow.objects.filter(pk=flows[0].pk).exists()


def test_owner_filter_takes_an_id_or_me(alice, flows):
    admin = UserFactory(is_superuser=True)
    by_id = api_as(admin).get(f"{API}flows/", {"owner": alice.pk})
    assert [flow["name"] for flow in by_id.json()["results"]] == ["alice-flow"]
    me = api_as(alice).get(f"{API}flows/", {"owner": "me"})
    assert [flow["name"] for flow in me.json()["results"]] == ["alice-flow"]


def test_owner_filter_with_garbage_is_400(alice, flows):
    response = api_as(alice).get(f"{API}flows/", {"owner": "someone"})
    assert response.status_code == 400
    assert "owner" in response.json()


def test_owner_me_when_anonymous_is_400():
    request = RequestFactory().get("/")
    request.user = AnonymousUser()
    with pytest.raises(ValidationError) as caught:
        owner_id("me", request)
    assert caught.value.status_code == 400


# -- changing the owner ----------------------------------------------------------------


def test_an_owner_that_does_not_exist_is_400(flows):
    admin = UserFactory(is_superuser=True)
    response = api_as(admin).patch(f"{API}flows/{flows[0].pk}/", {"owner": 999_999})
    assert response.status_code == 400
    assert "owner" in response.json()
    assert not AuditEntry.objects.exists()


def test_an_owner_cannot_give_their_flow_away(alice, bob, flows):
    response = api_as(alice).patch(f"{API}flows/{flows[0].pk}/", {"owner": bob.pk})
    assert response.status_code == 403
    flows[0].refresh_from_db()
    assert flows[0].owner_id == alice.pk
    assert not AuditEntry.objects.exists()


def test_the_change_permission_gives_a_flow_to_another_owner(alice, bob, flows):
    changer = grant(UserFactory(), "view_dataflow", "change_dataflow")
    response = api_as(changer).patch(f"{API}flows/{flows[0].pk}/", {"owner": bob.pk})
    assert response.status_code == 200
    entry = AuditEntry.objects.get()
    assert (entry.action, entry.details) == (AuditAction.FLOW_CHANGED, {"fields": ["owner"]})


# -- the audit trail -------------------------------------------------------------------


def test_an_api_start_is_audited_with_actor_and_address(alice, flows):
    response = api_as(alice).post(f"{API}flows/{flows[0].pk}/start/", REMOTE_ADDR="10.1.2.3")
    entry = AuditEntry.objects.get()
    assert entry.action == AuditAction.RUN_STARTED
    assert (entry.actor, entry.source, entry.remote_addr) == (alice, AuditSource.API, "10.1.2.3")
    assert (entry.run_id, entry.flow_name) == (response.json()["id"], "alice-flow")
    run = DataFlowRun.objects.get(pk=entry.run_id)
    assert (run.trigger, run.triggered_by) == (RunTrigger.API, alice)


def test_a_start_refused_leaves_no_entry(alice, flows):
    DataFlowRunFactory(data_flow=flows[0], status=RunStatus.IN_PROGRESS)
    response = api_as(alice).post(f"{API}flows/{flows[0].pk}/start/")
    assert response.status_code == 409
    assert not AuditEntry.objects.exists()


def test_a_delete_refused_leaves_no_entry(flows):
    admin = UserFactory(is_superuser=True)
    DataFlowRunFactory(data_flow=flows[0], status=RunStatus.PENDING)
    assert api_as(admin).delete(f"{API}flows/{flows[0].pk}/").status_code == 409
    assert not AuditEntry.objects.exists()


def test_a_deleted_flow_keeps_its_name_in_the_trail(flows):
    admin = UserFactory(is_superuser=True)
    assert api_as(admin).delete(f"{API}flows/{flows[0].pk}/").status_code == 204
    entry = AuditEntry.objects.get()
    assert (entry.action, entry.data_flow, entry.flow_name) == (
        AuditAction.FLOW_DELETED,
        None,
        "alice-flow",
    )


@pytest.mark.django_db(transaction=True)
def test_an_entry_rolls_back_with_its_change(alice, flows):
    def change_that_fails() -> None:
        with transaction.atomic():
            flows[0].set_enabled(False)
            audit.record(AuditAction.FLOW_DISABLED, source=AuditSource.API, data_flow=flows[0])
            raise RuntimeError("the change fails after the entry was written")

    with pytest.raises(RuntimeError):
        change_that_fails()
    assert not AuditEntry.objects.exists()
    flows[0].refresh_from_db()
    assert flows[0].enabled


@pytest.mark.django_db(transaction=True)
def test_an_entry_outside_a_transaction_is_refused(flows):
    with pytest.raises(transaction.TransactionManagementError):
        audit.record(AuditAction.FLOW_DISABLED, source=AuditSource.API, data_flow=flows[0])


def test_run_control_is_audited(alice, flows):
    failed = DataFlowRunFactory(data_flow=flows[0], status=RunStatus.FAILED)
    api = api_as(alice)
    assert api.post(f"{API}runs/{failed.pk}/retry/").status_code == 202
    assert api.delete(f"{API}runs/{failed.pk}/").status_code == 403  # deleting takes the permission
    deleter = grant(UserFactory(), "view_dataflowrun", "delete_dataflowrun")
    assert api_as(deleter).delete(f"{API}runs/{failed.pk}/").status_code == 204
    actions = list(AuditEntry.objects.order_by("pk").values_list("action", flat=True))
    assert actions == [AuditAction.RUN_RETRIED, AuditAction.RUN_DELETED]
    assert AuditEntry.objects.get(action=AuditAction.RUN_RETRIED).details == {"retry_of": failed.pk}


def test_enable_and_disable_are_audited_only_when_they_change_something(alice, flows):
    api = api_as(alice)
    api.post(f"{API}flows/{flows[0].pk}/enable/")  # already enabled
    api.post(f"{API}flows/{flows[0].pk}/disable/")
    assert list(AuditEntry.objects.values_list("action", flat=True)) == [AuditAction.FLOW_DISABLED]


def test_scheduled_runs_are_not_audited(flows, client):
    DataFlow.objects.update(next_run_at="2000-01-01T00:00:00Z")
    assert client.post("/dataflows/heartbeat/", REMOTE_ADDR="127.0.0.1").status_code == 200
    assert DataFlowRun.objects.count() == 2
    assert not AuditEntry.objects.exists()


def test_audit_list_is_for_staff_with_cursor_paging_and_filters(alice, flows):
    api = api_as(alice)
    for _ in range(3):
        api.post(f"{API}flows/{flows[0].pk}/disable/")
        api.post(f"{API}flows/{flows[0].pk}/enable/")
    assert api.get(f"{API}audit/").status_code == 403
    staff = api_as(grant(UserFactory(is_staff=True), "view_auditentry"))
    first = staff.get(f"{API}audit/", {"limit": 4, "flow": flows[0].pk})
    assert first.status_code == 200
    body = first.json()
    assert [entry["action"] for entry in body["results"]][:2] == [
        AuditAction.FLOW_ENABLED,
        AuditAction.FLOW_DISABLED,
    ]
    assert "count" not in body
    rest = staff.get(body["next"]).json()["results"]
    assert len(body["results"]) + len(rest) == 6
    bare_staff = api_as(UserFactory(is_staff=True))
    assert bare_staff.get(f"{API}audit/").json()["results"] == []  # no flow of theirs
    only = staff.get(f"{API}audit/", {"action": AuditAction.FLOW_DISABLED, "actor": alice.pk})
    assert len(only.json()["results"]) == 3
    assert staff.get(f"{API}audit/", {"after": "not a time"}).status_code == 400


# -- commands ----------------------------------------------------------------------------


def test_dataflows_run_as_an_owner_records_them(alice, flows):
    call_command("dataflows_run", "alice-flow", "--as-user", "alice", stdout=StringIO())
    run = flows[0].runs.get()
    assert run.triggered_by == alice
    entry = AuditEntry.objects.get()
    assert (entry.actor, entry.source, entry.run) == (alice, AuditSource.COMMAND, run)


def test_dataflows_run_as_another_owner_does_not_find_the_flow(alice, flows):
    with pytest.raises(CommandError, match="No data flow named 'bob-flow'"):
        call_command("dataflows_run", "bob-flow", "--as-user", "alice")
    assert not DataFlowRun.objects.exists()


def test_as_user_naming_nobody_is_a_command_error(flows):
    with pytest.raises(CommandError, match="there is no user 'nobody'"):
        call_command("dataflows_run", "alice-flow", "--as-user", "nobody")
    assert not DataFlowRun.objects.exists()
    assert not AuditEntry.objects.exists()


def test_dataflows_run_as_an_owner_who_may_not_manage(alice, flows, settings):
    settings.DATAFLOWS = {"OWNERS_MANAGE_OWN_FLOWS": False}
    with pytest.raises(CommandError, match="may not run"):
        call_command("dataflows_run", "alice-flow", "--as-user", "alice")
    assert not DataFlowRun.objects.exists()


def test_dataflows_list_as_an_owner(alice, flows):
    out = StringIO()
    call_command("dataflows_list", "--as-user", "alice", stdout=out)
    assert "alice-flow" in out.getvalue()
    assert "bob-flow" not in out.getvalue()


# -- the admin ---------------------------------------------------------------------------


def test_an_owner_in_the_admin_sees_only_their_flows(client, alice, flows):
    alice.is_staff = True
    alice.save()
    client.force_login(alice)
    page = client.get("/admin/dataflows/dataflow/")
    assert page.status_code == 200
    assert "alice-flow" in page.content.decode()
    assert "bob-flow" not in page.content.decode()
    assert client.get(f"/admin/dataflows/dataflow/{flows[1].pk}/change/").status_code in (302, 404)


def test_an_admin_edit_is_audited_with_its_fields(client, alice, flows):
    alice.is_staff = True
    alice.save()
    client.force_login(alice)
    client.post(
        "/admin/dataflows/dataflow/",
        {"action": "disable", "_selected_action": [flows[0].pk, flows[1].pk]},
    )
    entry = AuditEntry.objects.get()
    assert (entry.action, entry.source, entry.data_flow) == (
        AuditAction.FLOW_DISABLED,
        AuditSource.ADMIN,
        flows[0],
    )
    flows[1].refresh_from_db()
    assert flows[1].enabled


def test_an_admin_change_records_the_fields_it_changed(client, flows):
    admin_user = UserFactory(is_staff=True, is_superuser=True)
    client.force_login(admin_user)
    page = client.get(f"/admin/dataflows/dataflow/{flows[0].pk}/change/")
    form = page.context["adminform"].form
    data = {name: form[name].value() for name in form.fields if form[name].value() is not None}
    data["configuration"] = "{}"  # as the browser posts the form's text
    data["description"] = "changed in the admin"
    response = client.post(f"/admin/dataflows/dataflow/{flows[0].pk}/change/", data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    entry = AuditEntry.objects.get()
    assert (entry.action, entry.source) == (AuditAction.FLOW_CHANGED, AuditSource.ADMIN)
    # The fields the admin form reports changed (as its own history message lists them).
    assert "description" in entry.details["fields"]
    assert "name" not in entry.details["fields"]


def test_an_admin_run_control_is_audited(client, alice, flows):
    alice.is_staff = True
    alice.save()
    client.force_login(alice)
    failed = DataFlowRunFactory(data_flow=flows[0], status=RunStatus.FAILED)
    client.post(f"/admin/dataflows/dataflowrun/{failed.pk}/control/retry/")
    entry = AuditEntry.objects.get()
    assert (entry.action, entry.actor, entry.details) == (
        AuditAction.RUN_RETRIED,
        alice,
        {"retry_of": failed.pk},
    )


def test_an_owners_stream_wants_only_their_flows_runs(flows):
    from django_dataflows.live.base import Subscriber, load_run_ids

    mine = DataFlowRunFactory(data_flow=flows[0])
    theirs = DataFlowRunFactory(data_flow=flows[1])
    subscriber = Subscriber(lambda states: None, flow_ids=frozenset({flows[0].pk}))
    wanted = [
        state.run_id for state in load_run_ids([mine.pk, theirs.pk]) if subscriber.wants(state)
    ]
    assert wanted == [mine.pk]


def test_the_upstream_field_lists_only_the_chosen_flows_and_completes_visible_ones(
    client, alice, flows
):
    """A flow page does not render every flow as an option; the autocomplete offers the
    flows the user sees, and a flow they do not see is refused when posted."""
    alice.is_staff = True
    alice.save()
    mine, theirs = flows
    orders = DataFlowFactory(name="alice-orders", owner=alice)
    DataFlowFactory(name="alice-unrelated", owner=alice)
    mine.upstream_flows.set([orders])
    client.force_login(alice)
    page = client.get(f"/admin/dataflows/dataflow/{mine.pk}/change/")
    html = page.content.decode()
    assert "alice-orders" in html
    assert "alice-unrelated" not in html
    assert "bob-flow" not in html
    completed = client.get(
        "/admin/autocomplete/",
        {
            "app_label": "dataflows",
            "model_name": "dataflow",
            "field_name": "upstream_flows",
            "term": "",
        },
    )
    assert completed.status_code == 200
    assert sorted(item["text"] for item in completed.json()["results"]) == [
        "alice-flow",
        "alice-orders",
        "alice-unrelated",
    ]
    form = page.context["adminform"].form
    data = {name: form[name].value() for name in form.fields if form[name].value() is not None}
    data["configuration"] = "{}"
    data["upstream_flows"] = [orders.pk, theirs.pk]
    response = client.post(f"/admin/dataflows/dataflow/{mine.pk}/change/", data)
    assert response.status_code == 200
    assert "upstream_flows" in response.context["adminform"].form.errors
    assert list(mine.upstream_flows.all()) == [orders]
    # The flow itself, which the autocomplete offers, is refused with the reason.
    data["upstream_flows"] = [mine.pk]
    response = client.post(f"/admin/dataflows/dataflow/{mine.pk}/change/", data)
    assert response.context["adminform"].form.errors["upstream_flows"] == [
        "A flow cannot be its own upstream flow: alice-flow → alice-flow."
    ]
