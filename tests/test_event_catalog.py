"""The event catalog matches the code: each service's consumer handles exactly what it lists."""

from __future__ import annotations

import importlib

import pytest

from ticketing_common.events import Subject
from ticketing_common.events.catalog import CATALOG, publisher_of
from ticketing_common.messaging import Consumer
from ticketing_common.messaging.permissions import durable_name


def _consumer_of(service: str) -> Consumer | None:
    for module_name in (f"{service}.handlers", f"{service}.events"):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError:
            continue
        consumer = getattr(module, "consumer", None)
        if consumer is None and hasattr(module, "make_consumer"):
            # Payments builds its consumer around a payment provider.
            from payments.providers import SandboxProvider

            consumer = module.make_consumer(SandboxProvider())
        if isinstance(consumer, Consumer):
            return consumer
    return None


@pytest.mark.parametrize("service", sorted(CATALOG))
def test_each_consumer_handles_exactly_what_the_catalog_says(service: str) -> None:
    consumer = _consumer_of(service)
    handled = sorted(consumer.subjects) if consumer else []
    assert handled == sorted(subject.value for subject in CATALOG[service].consumes)
    if consumer:  # the bus lets a service's user take only the durable named after it
        assert consumer.durable_name == durable_name(service)


def test_every_subject_has_exactly_one_publisher() -> None:
    for subject in Subject:
        assert publisher_of(subject) in CATALOG
