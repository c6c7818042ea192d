"""Waste KPIs: bins above 80 % full per district and city."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.family import Batch, Domain, Group, GroupKey, KpiValue, district_and_city

OVER_80 = "waste.bins_over_80pct"
FULL_PCT = 80.0


@dataclass(slots=True)
class LastFill:
    """The bin's reading with the greatest event time in the window (ties: the first)."""

    samples: int = 0
    event_ms: int = -1
    fill_pct: float = 0.0
    district: str = ""


class Waste(Domain[LastFill]):
    name = "waste"
    entity_column = "bin_id"
    entity_scope = "bin"  # no bin-level KPI: bins count towards their district

    def new(self) -> LastFill:
        return LastFill()

    def add(self, acc: LastFill, batch: Batch, i: int) -> None:
        acc.samples += 1
        ts = batch["event_time_ms"][i]
        if ts > acc.event_ms:
            acc.event_ms = ts
            acc.fill_pct = batch["fill_pct"][i]
            acc.district = batch["district"][i]

    def contribute(
        self,
        entity: str,
        acc: LastFill,
        reference: Mapping[str, Any],
        groups: dict[GroupKey, Group],
    ) -> None:
        for g in district_and_city(groups, acc.district, acc.samples, city=self.city):
            g.add("over_80", 1.0 if acc.fill_pct > FULL_PCT else 0.0)

    def group_kpis(self, scope: str, group: Group, trend: bool) -> list[KpiValue]:
        return [(OVER_80, group.sums.get("over_80", 0.0), group.samples)]
