"""What a KPI family is made of, in the core so that family packages import nothing above it.

A family's rules (a :class:`Domain`: what an event adds to an entity's window, which KPIs
a window yields, which groups it counts in) are pure: they see column-wise batches
(:data:`Batch`) and reference data, never Kafka. The window engine
(``streams/engine/windows.py``) applies the rules on time to every family alike.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

CITY = "aarhus"  # the city scope's entity_id (a city pack's id where a domain follows one)
UNKNOWN = "unknown"  # the district of an entity without reference data
HOUR_MS = 3_600_000
TREND_SUFFIX = "_1h"  # the hopping 1-hour trend KPIs: ``<kpi>_1h``

Acc = TypeVar("Acc")
Batch = Mapping[str, Sequence[Any]]  # column name -> values, as the batch topics carry them
KpiValue = tuple[str, float, int]  # kpi name, value, samples
GroupKey = tuple[str, str]  # scope, entity_id


@dataclass(slots=True)
class Group:
    """What one group (a district, the city…) adds up to in a window: merged across partitions."""

    samples: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, amount: float) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + amount

    def extend(self, name: str, values: Iterable[float]) -> None:
        self.values.setdefault(name, []).extend(values)

    def merge(self, other: Group) -> None:
        self.samples += other.samples
        for name, amount in other.sums.items():
            self.add(name, amount)
        for name, values in other.values.items():
            self.extend(name, values)


class Domain(ABC, Generic[Acc]):
    """One KPI family's rules: what an event adds, which KPIs a window yields."""

    name: str  # "traffic": the processor's name and its stats key
    entity_column: str  # batch column naming the entity; also the message key
    entity_scope: str  # scope of entity-level KPIs ("segment", "car_park"…)
    reference_column: str | None = None  # events whose value here lacks reference data count
    trend: bool = False  # also hopping 1 h windows
    window_ms: int | None = None  # a fixed window size (devices: 1 h); None = the setting

    @abstractmethod
    def new(self) -> Acc: ...

    @abstractmethod
    def add(self, acc: Acc, batch: Batch, i: int) -> None:
        """Account event ``i`` of ``batch`` (already de-duplicated and on time)."""

    def dedup_key(self, batch: Batch, i: int) -> Any:
        """Events with equal keys in one window count once (first wins)."""
        return (batch[self.entity_column][i], batch["event_time_ms"][i])

    def entity_kpis(
        self, entity: str, acc: Acc, reference: Mapping[str, Any], trend: bool
    ) -> list[KpiValue]:
        return []

    @abstractmethod
    def contribute(
        self, entity: str, acc: Acc, reference: Mapping[str, Any], groups: dict[GroupKey, Group]
    ) -> None:
        """Add the entity's window into the groups it belongs to (created as needed)."""

    @abstractmethod
    def group_kpis(self, scope: str, group: Group, trend: bool) -> list[KpiValue]: ...

    def label(self, entity: str) -> str:
        """The entity_id of the entity's KPIs (devices prefix the sensor kind)."""
        return entity

    def expected(self, partition: int, partition_count: int, reference: Mapping[str, Any]) -> Any:
        """Entities that must report in every window of this partition (silence detection)."""
        return ()


def group(groups: dict[GroupKey, Group], scope: str, entity: str) -> Group:
    found = groups.get((scope, entity))
    if found is None:
        found = groups[(scope, entity)] = Group()
    return found


def district_and_city(groups: dict[GroupKey, Group], district: str, samples: int) -> list[Group]:
    """The groups an entity's window counts in, its samples added to each: callers add sums."""
    found = [group(groups, "district", district), group(groups, "city", CITY)]
    for g in found:
        g.samples += samples
    return found
