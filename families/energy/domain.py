"""Energy KPIs: consumption and its CO2e per meter, district and city.

CO2e = kWh × the district's grid emission factor, held as reference data
(city.districts.v1); a meter in a district without a factor has no CO2e row.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.family import Batch, Domain, Group, GroupKey, KpiValue, district_and_city

KWH = "energy.kwh"
CO2E = "energy.co2e_kg"


@dataclass(slots=True)
class Consumption:
    samples: int = 0
    kwh: float = 0.0
    district: str = ""


def emission_factor(record: dict[str, Any]) -> float | None:
    """None for a district without a known factor (a city pack's polygon): no CO2e there."""
    factor = record["grid_emission_kg_per_kwh"]
    return None if factor is None else float(factor)


def energy_kpis(kwh: float, co2e: float | None, samples: int) -> list[KpiValue]:
    out = [(KWH, kwh, samples)]
    if co2e is not None:
        out.append((CO2E, co2e, samples))
    return out


class Energy(Domain[Consumption]):
    name = "energy"
    entity_column = "meter_id"
    entity_scope = "meter"
    reference_column = "district"

    def new(self) -> Consumption:
        return Consumption()

    def add(self, acc: Consumption, batch: Batch, i: int) -> None:
        acc.samples += 1
        acc.kwh += batch["kwh"][i]
        acc.district = batch["district"][i]

    def _co2e(self, acc: Consumption, reference: Mapping[str, Any]) -> float | None:
        factor = reference.get(acc.district)
        return None if factor is None else acc.kwh * float(factor)

    def entity_kpis(
        self, entity: str, acc: Consumption, reference: Mapping[str, Any], trend: bool
    ) -> list[KpiValue]:
        return energy_kpis(acc.kwh, self._co2e(acc, reference), acc.samples)

    def contribute(
        self,
        entity: str,
        acc: Consumption,
        reference: Mapping[str, Any],
        groups: dict[GroupKey, Group],
    ) -> None:
        co2e = self._co2e(acc, reference)
        for g in district_and_city(groups, acc.district, acc.samples, city=self.city):
            g.add("kwh", acc.kwh)
            g.add("co2e_meters", 0.0 if co2e is None else 1.0)
            g.add("co2e", co2e or 0.0)
            g.add("meters", 1.0)

    def group_kpis(self, scope: str, group: Group, trend: bool) -> list[KpiValue]:
        # CO2e only where every meter's district has a factor: a partial sum would mislead.
        complete = group.sums.get("co2e_meters") == group.sums.get("meters")
        co2e = group.sums.get("co2e", 0.0) if complete else None
        return energy_kpis(group.sums.get("kwh", 0.0), co2e, group.samples)
