"""Traffic KPIs: what a reading adds to a segment's window, and the KPIs a window yields.

The time rules (windows, grace, duplicates, late readings, merge across partitions) are
the engine's (streams/engine/windows.py); the formulas are the KPI catalogue's
(families/traffic/__init__.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from core.family import (
    TREND_SUFFIX,
    UNKNOWN,
    Batch,
    Domain,
    Group,
    GroupKey,
    KpiValue,
    district_and_city,
)

VEHICLE_COUNT = "traffic.vehicle_count"
AVG_SPEED = "traffic.avg_speed_kmh"
CONGESTION = "traffic.congestion_index"


class SegmentInfo(NamedTuple):
    district: str
    free_flow_kmh: float


def segment_info(record: dict[str, Any]) -> SegmentInfo:
    return SegmentInfo(str(record["district"]), float(record["free_flow_speed_kmh"]))


@dataclass(slots=True)
class Sums:
    samples: int = 0
    vehicles: int = 0
    speed_weighted: float = 0.0

    def add(self, vehicles: int, speed: float) -> None:
        self.samples += 1
        self.vehicles += vehicles
        self.speed_weighted += speed * vehicles


def kpi_values(
    sums: Sums, free_flow_kmh: float | None = None, trend: bool = False
) -> list[KpiValue]:
    """The traffic KPIs of one entity and window (the KPI catalogue's formulas)."""
    suffix = TREND_SUFFIX if trend else ""
    values = [(VEHICLE_COUNT + suffix, float(sums.vehicles), sums.samples)]
    if sums.vehicles > 0:
        avg_speed = sums.speed_weighted / sums.vehicles
        values.append((AVG_SPEED + suffix, avg_speed, sums.samples))
        if free_flow_kmh and not trend:
            values.append((CONGESTION, max(0.0, 1.0 - avg_speed / free_flow_kmh), sums.samples))
    return values


class Traffic(Domain[Sums]):
    name = "traffic"
    entity_column = "segment_id"
    entity_scope = "segment"
    reference_column = "segment_id"
    trend = True

    def new(self) -> Sums:
        return Sums()

    def add(self, acc: Sums, batch: Batch, i: int) -> None:
        acc.add(batch["vehicle_count"][i], batch["avg_speed_kmh"][i])

    def entity_kpis(
        self, entity: str, acc: Sums, reference: Mapping[str, Any], trend: bool
    ) -> list[KpiValue]:
        info = reference.get(entity)
        return kpi_values(acc, info.free_flow_kmh if info else None, trend)

    def contribute(
        self, entity: str, acc: Sums, reference: Mapping[str, Any], groups: dict[GroupKey, Group]
    ) -> None:
        info = reference.get(entity)
        for g in district_and_city(
            groups, info.district if info else UNKNOWN, acc.samples, city=self.city
        ):
            g.add("vehicles", acc.vehicles)
            g.add("speed_weighted", acc.speed_weighted)

    def group_kpis(self, scope: str, group: Group, trend: bool) -> list[KpiValue]:
        sums = Sums(group.samples, int(group.sums.get("vehicles", 0)))
        sums.speed_weighted = group.sums.get("speed_weighted", 0.0)
        return kpi_values(sums, None, trend)
