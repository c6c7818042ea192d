"""What a KPI family is made of, in the core so that family packages import nothing above it.

A family's rules (a :class:`Domain`: what an event adds to an entity's window, which KPIs
a window yields, which groups it counts in) are pure: they see column-wise batches
(:data:`Batch`) and reference data, never Kafka. The window engine
(``streams/engine/windows.py``) applies the rules on time to every family alike.

A :class:`Family` declares the rest once: its events (schemas, key, batch columns), its
reference data, its KPIs and its independent oracle. Everything else is derived from it by
the registry (``families/registry.py``): the topics and their names, the KPI catalogue, the
AsyncAPI document, the sources' event streams and the processor list.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from core.kpis import Kpi
from schemas.catalog import TopicSpec

CITY = "aarhus"  # the city scope's entity_id without a city pack (a domain's default ``city``)
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
    city: str = CITY  # the city scope's entity_id: the city pack's id (``for_city``)

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

    def for_city(self, city: str) -> Domain[Acc]:
        """A copy of these rules whose city scope is named ``city`` (a city pack's id, from
        CITYSTREAM_CITY); without a pack the city scope is :data:`CITY`."""
        copied = copy.copy(self)
        copied.city = city
        return copied


def group(groups: dict[GroupKey, Group], scope: str, entity: str) -> Group:
    found = groups.get((scope, entity))
    if found is None:
        found = groups[(scope, entity)] = Group()
    return found


def district_and_city(
    groups: dict[GroupKey, Group], district: str, samples: int, *, city: str
) -> list[Group]:
    """The groups an entity's window counts in, its samples added to each: callers add sums.

    ``city`` is the city scope's entity_id: the domain's own (``self.city``).
    """
    found = [group(groups, "district", district), group(groups, "city", city)]
    for g in found:
        g.samples += samples
    return found


# --- the declaration of a family ------------------------------------------------------------

PARTIALS_SCHEMA = "window_partial.avsc"  # every family's partials: the engine's own record


@dataclass(frozen=True)
class Input:
    """One input of a family's processor: the rules applied to one batch topic."""

    domain: Domain[Any]
    batch_topic: str


@dataclass(frozen=True)
class EventStream:
    """A family's pair of topics: one event per message, and column-wise batches of them.

    ``columns`` are the fields of the event copied into the batch record (the batch schema
    has one array per column, plus ``origin``); ``key`` names the field whose value is the
    message key and picks the partition, so one entity's events stay in order.
    ``optional`` columns may be absent from a record (None in the batch): a field added
    later, which older sources do not fill.
    """

    topic: str
    batch_topic: str
    key: str
    columns: tuple[str, ...]
    optional: tuple[str, ...] = ()


@dataclass(frozen=True)
class Events:
    """A family's own events: what sources publish and its processor reads.

    Schema files are names in ``schemas/avro/`` (an absolute path is taken as it is). The
    event schema is the public contract; the batch schema has one array per column of
    ``columns`` (and of ``optional``, nullable), plus ``source`` and ``origin``.
    """

    schema: str
    batch_schema: str
    key: str  # the field keying the message: one entity's events share a partition
    columns: tuple[str, ...]  # the fields a batch carries: what the domain reads
    doc: str  # what the public topic carries (the AsyncAPI document shows it)
    optional: tuple[str, ...] = ()  # batch columns older sources may leave out (None)
    batch_doc: str = "Processor input: the same events, many per message, column-wise"
    restricted: bool = False  # the events hold personal data: not a public topic


@dataclass(frozen=True)
class Reference:
    """Reference data on a compacted topic (latest value per key), followed by the processor."""

    topic: str
    schema: str
    key: str
    doc: str
    compacted: bool = True

    @property
    def spec(self) -> TopicSpec:
        return TopicSpec(
            self.topic, self.schema, key=self.key, doc=self.doc, compacted=self.compacted
        )


@dataclass(frozen=True)
class Family:
    """One KPI family, declared once; the registry derives topics, catalogue and processors.

    A family either reads its own events (``domain`` and ``events``: its topics are
    ``city.<stem>.v1`` and ``city.<stem>.batches.v1``, and its processor dead-letters bad
    and late input), or reads other families' batches (``inputs``, e.g. devices reads
    traffic's and air's): then their own processors dead-letter that input, once.
    Its partials topic is ``city.<name>.partials.v<partials_version>``.
    """

    name: str  # the processor's name (`citystream process <name>`); KPI names start with it
    kpis: tuple[Kpi, ...]
    domain: Domain[Any] | None = None  # the rules on the family's own events
    events: Events | None = None
    inputs: tuple[Input, ...] = ()  # instead: other families' batch topics
    stem: str = ""  # the event topics' name part when it is not ``name`` (service_requests)
    reference: Reference | None = None
    to_reference: Callable[[dict[str, Any]], Any] = dict  # a reference record -> its value
    partials_version: int = 1  # raised when the partials' meaning changes
    # The independent recomputation of the family's KPIs (oracles/), sharing no code here.
    oracle: Callable[..., Any] | None = None

    def __post_init__(self) -> None:
        own = self.domain is not None and self.events is not None
        if own == bool(self.inputs) or (self.domain is None) != (self.events is None):
            raise ValueError(f"family {self.name}: give domain and events, or inputs")
        for kpi in self.kpis:
            if kpi.domain != self.name:
                raise ValueError(f"family {self.name}: KPI {kpi.name} must start {self.name}.")
            if self.events is not None and kpi.source_topic != self.topic:
                raise ValueError(f"family {self.name}: KPI {kpi.name} comes from {self.topic}")

    @property
    def topic(self) -> str:
        """The public event topic: one event per message."""
        return f"city.{self.stem or self.name}.v1"

    @property
    def batch_topic(self) -> str:
        """The processor's input: the same events, column-wise, many per message."""
        return f"city.{self.stem or self.name}.batches.v1"

    @property
    def partials_topic(self) -> str:
        return f"city.{self.name}.partials.v{self.partials_version}"

    @property
    def stream(self) -> EventStream | None:
        """What sources publish to (None for a family without events of its own)."""
        if self.events is None:
            return None
        e = self.events
        return EventStream(self.topic, self.batch_topic, e.key, e.columns, e.optional)

    @property
    def processor_inputs(self) -> tuple[Input, ...]:
        if self.domain is not None:
            return (Input(self.domain, self.batch_topic),)
        return self.inputs

    @property
    def dead_letters_input(self) -> bool:
        """Only the family owning the events dead-letters their bad and late ones."""
        return self.domain is not None

    @property
    def topics(self) -> tuple[TopicSpec, ...]:
        """Its topics: reference data, events, batches, partials (in that order)."""
        specs = [self.reference.spec] if self.reference else []
        if self.events is not None:
            e = self.events
            specs.append(
                TopicSpec(self.topic, e.schema, key=e.key, doc=e.doc, restricted=e.restricted)
            )
            specs.append(
                TopicSpec(
                    self.batch_topic,
                    e.batch_schema,
                    key="partition number",
                    doc=e.batch_doc,
                    internal=True,
                )
            )
        doc = f"Per-partition group sums from the {self.name} processor's first stage"
        specs.append(
            TopicSpec(
                self.partials_topic,
                PARTIALS_SCHEMA,
                key="source partition",
                doc=doc,
                internal=True,
                single_partition=True,
            )
        )
        return tuple(specs)
