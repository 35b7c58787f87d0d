"""factory_boy factories for the app's models."""

from __future__ import annotations

from typing import Any

import factory
from django.contrib.auth import get_user_model

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
