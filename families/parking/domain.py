"""Parking KPIs: occupancy of each car park, and of its district and the city."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.family import (
    UNKNOWN,
    Batch,
    Domain,
    Group,
    GroupKey,
    KpiValue,
    district_and_city,
)

OCCUPANCY = "parking.occupancy_pct"


@dataclass(slots=True)
class LastCount:
    """The reading with the greatest event time in the window (ties: the first)."""

    samples: int = 0
    event_ms: int = -1
    occupied: int = 0
    capacity: int = 0


def car_park_district(record: dict[str, Any]) -> str:
    """A car park's reference value: its district."""
    return str(record["district"])


def occupancy(occupied: float, capacity: float) -> float:
    return occupied / capacity * 100.0


class Parking(Domain[LastCount]):
    name = "parking"
    entity_column = "car_park_id"
    entity_scope = "car_park"
    reference_column = "car_park_id"

    def new(self) -> LastCount:
        return LastCount()

    def add(self, acc: LastCount, batch: Batch, i: int) -> None:
        acc.samples += 1
        ts = batch["event_time_ms"][i]
        if ts > acc.event_ms:
            acc.event_ms = ts
            acc.occupied = batch["vehicle_count"][i]
            acc.capacity = batch["total_spaces"][i]

    def entity_kpis(
        self, entity: str, acc: LastCount, reference: Mapping[str, Any], trend: bool
    ) -> list[KpiValue]:
        if acc.capacity <= 0:
            return []
        return [(OCCUPANCY, occupancy(acc.occupied, acc.capacity), acc.samples)]

    def contribute(
        self,
        entity: str,
        acc: LastCount,
        reference: Mapping[str, Any],
        groups: dict[GroupKey, Group],
    ) -> None:
        for g in district_and_city(
            groups, str(reference.get(entity, UNKNOWN)), acc.samples, city=self.city
        ):
            g.add("occupied", acc.occupied)
            g.add("capacity", acc.capacity)

    def group_kpis(self, scope: str, group: Group, trend: bool) -> list[KpiValue]:
        capacity = group.sums.get("capacity", 0.0)
        if capacity <= 0:
            return []
        return [(OCCUPANCY, occupancy(group.sums["occupied"], capacity), group.samples)]
