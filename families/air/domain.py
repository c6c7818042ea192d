"""Air-quality KPIs: pollutant means and the AQI per road-segment sensor, district, city."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

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

AQI = "air.aqi"
POLLUTANTS = (  # the five indices of a reading, as its schema names them
    "ozone",
    "particulate_matter",
    "carbon_monoxide",
    "sulfure_dioxide",
    "nitrogen_dioxide",
)


@dataclass(slots=True)
class AirSums:
    samples: int = 0
    pollutants: list[float] = field(default_factory=lambda: [0.0] * len(POLLUTANTS))
    worst: float = 0.0  # Σ over readings of the highest of the five indices


def air_kpis(sums: Mapping[str, float], samples: int, trend: bool) -> list[KpiValue]:
    """Means over the window's readings; trend windows carry the AQI only."""
    if samples == 0:
        return []
    if trend:
        return [(AQI + TREND_SUFFIX, sums["worst"] / samples, samples)]
    out = [(f"air.{p}_mean", sums[p] / samples, samples) for p in POLLUTANTS]
    out.append((AQI, sums["worst"] / samples, samples))
    return out


def _as_sums(acc: AirSums) -> dict[str, float]:
    return {**dict(zip(POLLUTANTS, acc.pollutants, strict=True)), "worst": acc.worst}


class Air(Domain[AirSums]):
    name = "air"
    entity_column = "sensor_id"
    entity_scope = "segment"  # the sensors are the traffic segments' REPORT_IDs
    reference_column = "sensor_id"
    trend = True

    def new(self) -> AirSums:
        return AirSums()

    def add(self, acc: AirSums, batch: Batch, i: int) -> None:
        values = [batch[p][i] for p in POLLUTANTS]
        acc.samples += 1
        for k, value in enumerate(values):
            acc.pollutants[k] += value
        acc.worst += max(values)

    def entity_kpis(
        self, entity: str, acc: AirSums, reference: Mapping[str, Any], trend: bool
    ) -> list[KpiValue]:
        return air_kpis(_as_sums(acc), acc.samples, trend)

    def contribute(
        self, entity: str, acc: AirSums, reference: Mapping[str, Any], groups: dict[GroupKey, Group]
    ) -> None:
        info = reference.get(entity)
        sums = _as_sums(acc)
        for g in district_and_city(
            groups, info.district if info else UNKNOWN, acc.samples, city=self.city
        ):
            for name, amount in sums.items():
                g.add(name, amount)

    def group_kpis(self, scope: str, group: Group, trend: bool) -> list[KpiValue]:
        return air_kpis(group.sums, group.samples, trend)
