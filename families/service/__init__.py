"""Service requests (311): requests opened, response time p50/p90 and SLA met per category,
district and city; SLAs per category come from the categories' reference data. The city
scope follows the city pack (CITYSTREAM_CITY: Boston's 311)."""

from __future__ import annotations

from core.family import Events, Family, Reference
from core.kpis import TUMBLING, Kpi
from families.service.domain import OPENED, P50, P90, SLA_MET, Service, sla_minutes
from oracles.simulated import service_kpis

TOPIC = "city.service_requests.v1"
SCOPES = ("category", "district", "city")

KPIS = (
    Kpi(OPENED, "requests", "requests opened in the window", TUMBLING, SCOPES, TOPIC,
        "service"),
    Kpi(P50, "min", "median of closed − opened over requests closed in the window",
        TUMBLING, SCOPES, TOPIC, "service"),
    Kpi(P90, "min",
        "90th percentile (nearest rank) of closed − opened over requests closed in the window",
        TUMBLING, SCOPES, TOPIC, "service"),
    Kpi(SLA_MET, "%",
        "requests closed in the window within their category's SLA / requests closed × 100",
        TUMBLING, SCOPES, TOPIC, "service"),
)  # fmt: skip

FAMILY = Family(
    name="service",
    stem="service_requests",
    kpis=KPIS,
    domain=Service(),
    events=Events(
        schema="service_request_event.avsc",
        batch_schema="service_request_batch.avsc",
        key="request_id",
        columns=("request_id", "status", "category", "district", "event_time_ms", "opened_at_ms"),
        optional=("sla_due_ms",),  # a request's own due time (Boston's TARGET_DT), else None
        doc="Service request lifecycle events (opened, assigned, closed), one per message",
        batch_doc="Processor input: the same status changes, many per message, column-wise",
        restricted=True,  # personal data (schemas/avro contract): the city's services only
    ),
    reference=Reference(
        "city.service_categories.v1",
        "service_category.avsc",
        key="category",
        doc="Service request categories with their SLA, latest value per category",
    ),
    to_reference=sla_minutes,
    oracle=service_kpis,  # a city pack's 311 data: oracles/boston_311.py
)
