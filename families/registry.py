"""The registry of KPI families: adding a family is its package plus one entry in FAMILIES.

Everything that used to be listed by hand per family is derived here from the families'
declarations: the topic catalogue (``TOPICS``: every family's topics, then the core's), the
KPI catalogue (``KPIS``) and the sources' event streams (``EVENT_STREAMS``). The processor
list is derived from it in ``streams/worker.py``; the docs' KPI table and AsyncAPI
document in ``citystream/catalog.py``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from core.family import EventStream, Family
from core.kafka import align_retention, create_topics, register_subjects
from core.kpis import Kpi
from core.settings import Settings
from families import air, devices, energy, parking, service, traffic, waste
from schemas.catalog import CORE_TOPICS, TopicSpec

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
    """Families, checked to fit together: unique names, KPIs and topics.

    Two families may share a reference topic (air and devices follow traffic's road
    segments) only by declaring the same one; any other topic has one owner.
    """

    def __init__(self, families: Iterable[Family]) -> None:
        self.families = tuple(families)
        self.by_name: dict[str, Family] = _unique((f.name, f) for f in self.families)
        self.topics: dict[str, TopicSpec] = _topics(self.families)
        self.kpis: dict[str, Kpi] = _unique((k.name, k) for f in self.families for k in f.kpis)
        # the sources' way in: a family's pair of event topics, by family name
        self.streams: dict[str, EventStream] = {
            f.name: f.stream for f in self.families if f.stream is not None
        }

    def ensure_topics(self, settings: Settings, timeout: float = 30.0) -> list[str]:
        """Create the missing topics of the catalogue; existing ones keep their partitions,
        and their retention is altered to follow their data contracts (idempotently)."""
        return self.setup_topics(settings, timeout)[0]

    def setup_topics(
        self, settings: Settings, timeout: float = 30.0
    ) -> tuple[list[str], dict[str, dict[str, str]]]:
        """:meth:`ensure_topics`, also returning the existing topics whose configs were
        altered and what was set: `citystream init` audits those as governance changes
        (#17), so the caller, which holds the settings of the audit log, records them."""
        created = create_topics(settings, self.topics.values(), timeout)
        existing = [s for s in self.topics.values() if settings.topic(s.name) not in created]
        altered = align_retention(settings, existing, timeout)  # new ones were created aligned
        return created, altered

    def register_schemas(self, settings: Settings) -> dict[str, int]:
        """Register every topic's schema under its subject (``<topic>-value``, BACKWARD)."""
        return register_subjects(settings, self.topics.values())


T = TypeVar("T")


def _unique(items: Iterable[tuple[str, T]]) -> dict[str, T]:
    out: dict[str, T] = {}
    for name, item in items:
        if name in out:
            raise ValueError(f"{name} is declared twice")
        out[name] = item
    return out


def _topics(families: Iterable[Family]) -> dict[str, TopicSpec]:
    """Each family's topics in registration order, then the core's; a reference topic that
    several families follow once (the same declaration), any other topic exactly once."""
    out: dict[str, TopicSpec] = {}
    shared: set[str] = set()  # reference topics, which another family may declare again
    for family in families:
        reference = family.reference.topic if family.reference else None
        for spec in family.topics:
            known = out.get(spec.name)
            if known is not None and (spec.name not in shared or reference != spec.name):
                raise ValueError(f"topic {spec.name} is declared twice")
            if known is not None and known != spec:
                raise ValueError(f"reference topic {spec.name} is declared twice, differently")
            out[spec.name] = spec
            if spec.name == reference:
                shared.add(spec.name)
    for spec in CORE_TOPICS.values():
        if spec.name in out:
            raise ValueError(f"topic {spec.name} is the core's")
        out[spec.name] = spec
    return out


REGISTRY = Registry(FAMILIES)
TOPICS = REGISTRY.topics
KPIS = REGISTRY.kpis
EVENT_STREAMS = REGISTRY.streams


def ensure_topics(settings: Settings, timeout: float = 30.0) -> list[str]:
    """Create the registered families' and the core's missing topics."""
    return REGISTRY.ensure_topics(settings, timeout)


def setup_topics(
    settings: Settings, timeout: float = 30.0
) -> tuple[list[str], dict[str, dict[str, str]]]:
    """The topics created and the existing topics' configs altered (see
    :meth:`Registry.setup_topics`)."""
    return REGISTRY.setup_topics(settings, timeout)


def register_schemas(settings: Settings) -> dict[str, int]:
    """Register the schema of every topic of the registry (``<topic>-value``, BACKWARD)."""
    return REGISTRY.register_schemas(settings)
