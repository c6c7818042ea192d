"""The registry of KPI families: adding a family is its package plus one entry in FAMILIES.

Everything that used to be listed by hand per family is derived here from the families'
declarations: the KPI catalogue (``KPIS``) and the sources' event streams
(``EVENT_STREAMS``). The processor list is derived from it in ``streams/worker.py``, the
docs' KPI table in ``citystream/catalog.py``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from core.family import EventStream, Family
from core.kpis import Kpi
from families import air, devices, energy, parking, service, traffic, waste

FAMILIES: tuple[Family, ...] = (
    traffic.FAMILY,
    air.FAMILY,
    parking.FAMILY,
    devices.FAMILY,
    energy.FAMILY,
    waste.FAMILY,
    service.FAMILY,
)


class Registry:
    """Families, checked to fit together: unique names and KPIs."""

    def __init__(self, families: Iterable[Family]) -> None:
        self.families = tuple(families)
        self.by_name: dict[str, Family] = _unique((f.name, f) for f in self.families)
        self.kpis: dict[str, Kpi] = _unique((k.name, k) for f in self.families for k in f.kpis)
        # the sources' way in: a family's pair of event topics, by family name
        self.streams: dict[str, EventStream] = {
            f.name: f.stream for f in self.families if f.stream is not None
        }


T = TypeVar("T")


def _unique(items: Iterable[tuple[str, T]]) -> dict[str, T]:
    out: dict[str, T] = {}
    for name, item in items:
        if name in out:
            raise ValueError(f"{name} is declared twice")
        out[name] = item
    return out


REGISTRY = Registry(FAMILIES)
KPIS = REGISTRY.kpis
EVENT_STREAMS = REGISTRY.streams
