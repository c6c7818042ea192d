"""Service processor: city.service_requests.batches.v1 → opened, response p50/p90 and SLA
met per category, district and city. SLAs come from city.service_categories.v1.

Dataflow: streams/engine/agents.py; time rules: streams/engine/windows.py.
"""

from __future__ import annotations

from typing import Any

from core.family import CITY
from streams.engine.processor import Input, ProcessorSpec
from streams.service.domain import Service


def sla_minutes(record: dict[str, Any]) -> int:
    return int(record["sla_minutes"])


def service_spec(city: str = CITY) -> ProcessorSpec:
    """The service processor whose city scope is ``city`` (a city pack's id)."""
    return ProcessorSpec(
        name="service",
        inputs=(Input(Service(city), "city.service_requests.batches.v1"),),
        partials_topic="city.service.partials.v1",
        reference_topic="city.service_categories.v1",
        to_reference=sla_minutes,
    )


SPEC = service_spec()
