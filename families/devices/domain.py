"""Device health: uptime per sensor and hour, with silence detection.

Every known sensor (the road-segment reference data: traffic counters and air sensors
share REPORT_IDs) is expected once per 5 minutes. Each hourly window of an input
partition starts with every sensor of that partition at zero readings, and the engine
opens every hour up to stream time even when nothing arrived in it, so a sensor that
stops reporting shows as 0 % instead of vanishing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.family import (
    HOUR_MS,
    UNKNOWN,
    Batch,
    Domain,
    Group,
    GroupKey,
    KpiValue,
    district_and_city,
)
from core.kafka import partition_for

UPTIME = "devices.uptime_pct"
EXPECTED_PER_HOUR = 12  # one reading every 5 minutes


@dataclass(slots=True)
class Received:
    readings: int = 0


def uptime_pct(readings: int) -> float:
    return readings / EXPECTED_PER_HOUR * 100.0


class Uptime(Domain[Received]):
    """One sensor kind's readings (``traffic`` or ``air``) counted per hour."""

    name = "devices"
    entity_scope = "sensor"
    window_ms = HOUR_MS

    def __init__(self, kind: str, entity_column: str) -> None:
        self.kind = kind
        self.entity_column = entity_column
        self.reference_column = entity_column  # an unknown sensor re-reads the reference
        # per (partition, partition count): the reference mapping it was computed from, and
        # the sensors; recomputed when the follower swaps in a new mapping (any change)
        self._expected: dict[tuple[int, int], tuple[Mapping[str, Any], tuple[str, ...]]] = {}

    def new(self) -> Received:
        return Received()

    def add(self, acc: Received, batch: Batch, i: int) -> None:
        acc.readings += 1

    def label(self, entity: str) -> str:
        return f"{self.kind}:{entity}"

    def expected(
        self, partition: int, partition_count: int, reference: Mapping[str, Any]
    ) -> tuple[str, ...]:
        """The known sensors whose readings land on this partition (same key hashing)."""
        key = (partition, partition_count)
        cached = self._expected.get(key)
        if cached is None or cached[0] is not reference:
            sensors = tuple(
                s for s in sorted(reference)
                if partition_for(s.encode(), partition_count) == partition
            )  # fmt: skip
            cached = self._expected[key] = (reference, sensors)
        return cached[1]

    def entity_kpis(
        self, entity: str, acc: Received, reference: Mapping[str, Any], trend: bool
    ) -> list[KpiValue]:
        return [(UPTIME, uptime_pct(acc.readings), acc.readings)]

    def contribute(
        self,
        entity: str,
        acc: Received,
        reference: Mapping[str, Any],
        groups: dict[GroupKey, Group],
    ) -> None:
        info = reference.get(entity)
        for g in district_and_city(
            groups, info.district if info else UNKNOWN, acc.readings, city=self.city
        ):
            g.add("uptime_sum", uptime_pct(acc.readings))
            g.add("sensors", 1.0)

    def group_kpis(self, scope: str, group: Group, trend: bool) -> list[KpiValue]:
        sensors = group.sums.get("sensors", 0.0)
        if not sensors:
            return []
        return [(UPTIME, group.sums["uptime_sum"] / sensors, group.samples)]
