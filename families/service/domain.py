"""Service-request (311) KPIs per category, district and city.

Each lifecycle event counts in the window of its own event time: an ``opened`` event
adds to requests_opened, a ``closed`` one adds its response time (closed − opened_at,
which every event carries, so no request state outlives a window) and whether it met
its SLA: its own due time when the event carries one (``sla_due_ms``, e.g. Boston's
TARGET_DT: met when closed ≤ due), else its category's SLA (city.service_categories.v1);
a request with neither counts in the response times but not in sla_met_pct.

The city scope's entity_id is the domain's ``city`` (the city pack's id; aarhus by default).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from core.family import CITY, Batch, Domain, Group, GroupKey, KpiValue, group

OPENED = "service.requests_opened"
P50 = "service.response_minutes_p50"
P90 = "service.response_minutes_p90"
SLA_MET = "service.sla_met_pct"
# status, category, district, event ms, opened ms, due ms (None: the category's SLA)
Event = tuple[str, str, str, int, int, int | None]


def sla_minutes(record: dict[str, Any]) -> int:
    """A category's reference value: its SLA in minutes."""
    return int(record["sla_minutes"])


def nearest_rank(values: Sequence[float], pct: float) -> float:
    """The value at rank ceil(pct/100 × n) of the sorted values (nearest-rank percentile)."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(pct / 100 * len(ordered))) - 1]


def service_kpis(group: Group) -> list[KpiValue]:
    out: list[KpiValue] = []
    opened = int(group.sums.get("opened", 0))
    if opened:
        out.append((OPENED, float(opened), opened))
    responses = group.values.get("response_minutes", [])
    if responses:
        out.append((P50, nearest_rank(responses, 50), len(responses)))
        out.append((P90, nearest_rank(responses, 90), len(responses)))
    with_sla = int(group.sums.get("closed_with_sla", 0))
    if with_sla:
        out.append((SLA_MET, group.sums.get("sla_met", 0.0) / with_sla * 100.0, with_sla))
    return out


class Service(Domain[list[Event]]):
    name = "service"
    entity_column = "request_id"
    entity_scope = "request"  # no request-level KPI
    reference_column = "category"

    def __init__(self, city: str = CITY) -> None:
        self.city = city

    def new(self) -> list[Event]:
        return []

    def dedup_key(self, batch: Batch, i: int) -> Any:
        return (batch["request_id"][i], batch["status"][i], batch["event_time_ms"][i])

    def add(self, acc: list[Event], batch: Batch, i: int) -> None:
        acc.append(
            (
                batch["status"][i],
                batch["category"][i],
                batch["district"][i],
                batch["event_time_ms"][i],
                batch["opened_at_ms"][i],
                _due(batch, i),
            )
        )

    def contribute(
        self,
        entity: str,
        acc: list[Event],
        reference: Mapping[str, Any],
        groups: dict[GroupKey, Group],
    ) -> None:
        for status, category, district, event_ms, opened_ms, due_ms in acc:
            closed = status == "closed"
            met = _sla_met(event_ms, opened_ms, due_ms, reference.get(category)) if closed else None
            for key in (("category", category), ("district", district), ("city", self.city)):
                g = group(groups, *key)
                g.samples += 1
                if status == "opened":
                    g.add("opened", 1.0)
                elif closed:
                    minutes = (event_ms - opened_ms) / 60_000
                    g.extend("response_minutes", (minutes,))
                    if met is not None:
                        g.add("closed_with_sla", 1.0)
                        g.add("sla_met", 1.0 if met else 0.0)

    def group_kpis(self, scope: str, group: Group, trend: bool) -> list[KpiValue]:
        return service_kpis(group)


def _due(batch: Batch, i: int) -> int | None:
    """The event's own due time; batches from before the field have an empty column."""
    due = batch.get("sla_due_ms") or ()
    return due[i] if i < len(due) else None


def _sla_met(event_ms: int, opened_ms: int, due_ms: int | None, sla: Any) -> bool | None:
    """Whether a close met its SLA: its due time first, else the category's minutes;
    None when it has neither (then it is not judged)."""
    if due_ms is not None:
        return event_ms <= due_ms
    if sla is not None:
        return (event_ms - opened_ms) / 60_000 <= sla
    return None
