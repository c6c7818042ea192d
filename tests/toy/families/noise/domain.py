"""Noise KPIs: the equivalent sound level (Leq) per sensor, district and city.

Decibels do not add: a window's level is 10·log10 of the mean sound energy 10^(dB/10) of
its readings, so the domain sums energies and takes the logarithm only when a KPI is made.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.family import Batch, Domain, Group, GroupKey, KpiValue, district_and_city

LEQ = "noise.leq_db"


@dataclass(slots=True)
class SoundEnergy:
    samples: int = 0
    energy: float = 0.0  # Σ 10^(dB/10) over the readings
    district: str = ""


def leq(energy: float, samples: int) -> float:
    return 10 * math.log10(energy / samples)


class Noise(Domain[SoundEnergy]):
    name = "noise"
    entity_column = "sensor_id"  # a batch column; also the message key
    entity_scope = "sensor"

    def new(self) -> SoundEnergy:
        return SoundEnergy()

    def add(self, acc: SoundEnergy, batch: Batch, i: int) -> None:
        acc.samples += 1
        acc.energy += 10 ** (batch["decibels"][i] / 10)
        acc.district = batch["district"][i]

    def entity_kpis(
        self, entity: str, acc: SoundEnergy, reference: Mapping[str, Any], trend: bool
    ) -> list[KpiValue]:
        return [(LEQ, leq(acc.energy, acc.samples), acc.samples)]

    def contribute(
        self,
        entity: str,
        acc: SoundEnergy,
        reference: Mapping[str, Any],
        groups: dict[GroupKey, Group],
    ) -> None:
        for g in district_and_city(groups, acc.district, acc.samples, city=self.city):
            g.add("energy", acc.energy)

    def group_kpis(self, scope: str, group: Group, trend: bool) -> list[KpiValue]:
        return [(LEQ, leq(group.sums["energy"], group.samples), group.samples)]
