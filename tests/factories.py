"""factory_boy factories for the app's models."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import factory
from django.contrib.auth import get_user_model
from django.utils import timezone

from django_dataflows.models import DataFlow, DataFlowRun, RunStatus, RunTrigger


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda user: f"{user.username}@example.com")
    password = factory.django.Password("secret-password")


class DataFlowFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = DataFlow

    name = factory.Sequence(lambda n: f"flow-{n}")
    description = "A flow made by a test."
    flow = "tests.testapp.flows.CountRows"
    enabled = True
    configuration: Any = factory.LazyFunction(dict)
    run_interval = 60


class DataFlowRunFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = DataFlowRun

    data_flow = factory.SubFactory(DataFlowFactory)
    status = RunStatus.SUCCESS
    trigger = RunTrigger.MANUAL
    # The moment a run last moved into pending or in progress, which timeouts count from:
    # its start where the test gives one; else empty, and the pickup deadline counts from
    # its creation.
    started_at = None
    activated_at = factory.LazyAttribute(lambda run: run.started_at)

    @classmethod
    def _adjust_kwargs(cls, **kwargs: Any) -> dict[str, Any]:
        # duration_ms is computed by the database from started_at and ended_at: a test that
        # wants a duration gets the timestamps that make it.
        duration = kwargs.pop("duration_ms", None)
        if duration is not None:
            started = kwargs.get("started_at") or kwargs.get("created_at") or timezone.now()
            kwargs["started_at"] = started
            kwargs["ended_at"] = started + timedelta(milliseconds=duration)
        return kwargs
