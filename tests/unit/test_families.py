"""The families registry: what it derives keeps the public contract, and it refuses
declarations that do not fit together (a topic or KPI declared twice)."""

from __future__ import annotations

import dataclasses
import re

import pytest

from core.family import Events, Family, Reference
from core.kpis import TUMBLING, Kpi
from families import traffic, waste
from families.registry import FAMILIES, KPIS, TOPICS, Registry
from schemas.catalog import load_schema
from streams.worker import PROCESSORS, processor_specs

# The topic names are a contract (subscribers, ACLs, schema subjects): a refactoring of the
# declarations must not change one.
PUBLIC_TOPICS = [
    "city.road_segments.v1", "city.traffic.v1", "city.air.v1", "city.car_parks.v1",
    "city.parking.v1", "city.districts.v1", "city.energy.v1", "city.waste.v1",
    "city.service_categories.v1", "city.service_requests.v1", "city.kpi.v1", "city.alerts.v1",
    "city.dlq.v1", "city.audit.v1", "city.audit.checkpoints.v1",
]  # fmt: skip
INTERNAL_TOPICS = {
    "city.traffic.batches.v1", "city.traffic.partials.v2", "city.air.batches.v1",
    "city.air.partials.v1", "city.parking.batches.v1", "city.parking.partials.v1",
    "city.devices.partials.v1", "city.energy.batches.v1", "city.energy.partials.v1",
    "city.waste.batches.v1", "city.waste.partials.v1", "city.service_requests.batches.v1",
    "city.service.partials.v1", "city.kpi.batches.v1", "city.privacy.optouts.v1",
}  # fmt: skip


def test_the_derived_topics_are_the_published_ones() -> None:
    assert [n for n, spec in TOPICS.items() if not spec.internal] == PUBLIC_TOPICS
    assert {n for n, spec in TOPICS.items() if spec.internal} == INTERNAL_TOPICS
    assert all(TOPICS[n].compacted for n in ("city.road_segments.v1", "city.car_parks.v1"))
    assert [s.name for s in TOPICS.values() if s.single_partition] == [
        *(f.partials_topic for f in FAMILIES),
        "city.audit.v1",
        "city.audit.checkpoints.v1",
    ]


def test_each_family_has_a_processor_and_its_kpis_in_the_catalogue() -> None:
    assert list(PROCESSORS) == [f.name for f in FAMILIES]
    assert list(KPIS) == [k.name for f in FAMILIES for k in f.kpis]
    assert PROCESSORS["service"].partials_topic == "city.service.partials.v1"
    assert not PROCESSORS["devices"].dead_letters_input
    assert [i.batch_topic for i in PROCESSORS["devices"].inputs] == [
        "city.traffic.batches.v1",
        "city.air.batches.v1",
    ]


def test_a_batch_schema_has_the_declared_columns() -> None:
    for family in FAMILIES:
        if family.events is not None:
            fields = [f["name"] for f in load_schema(family.events.batch_schema)["fields"]]
            columns = [*family.events.columns, *family.events.optional]
            assert fields == ["source", *columns, "origin"], family.name


def test_a_city_pack_names_every_family_s_city_scope() -> None:
    boston = processor_specs(city="boston")
    assert boston.keys() == PROCESSORS.keys()
    for name, spec in boston.items():
        assert {i.domain.city for i in spec.inputs} == {"boston"}, name
        assert {i.domain.city for i in PROCESSORS[name].inputs} == {"aarhus"}, name
        topics = [i.batch_topic for i in spec.inputs]
        assert topics == [i.batch_topic for i in PROCESSORS[name].inputs], name


def copy_of_waste(**changes: object) -> Family:
    return dataclasses.replace(waste.FAMILY, **changes)  # type: ignore[arg-type]


def test_a_topic_declared_twice_is_refused() -> None:
    twin = copy_of_waste(name="bins", kpis=(), stem="waste")  # city.waste.v1 again
    with pytest.raises(ValueError, match=re.escape("city.waste.v1 is declared twice")):
        Registry((*FAMILIES, twin))
    with pytest.raises(ValueError, match="waste is declared twice"):
        Registry((*FAMILIES, waste.FAMILY))


def test_a_shared_reference_topic_must_be_the_same_declaration() -> None:
    same = copy_of_waste(name="bins", kpis=(), reference=traffic.SEGMENTS)
    assert Registry((*FAMILIES, same)).topics["city.road_segments.v1"] == traffic.SEGMENTS.spec
    other = Reference("city.road_segments.v1", "district.avsc", key="district", doc="other")
    with pytest.raises(ValueError, match="declared twice, differently"):
        Registry((*FAMILIES, copy_of_waste(name="bins", kpis=(), reference=other)))


def test_a_family_declaration_is_checked() -> None:
    events = waste.FAMILY.events
    assert events is not None
    kpi = Kpi("bins.full", "bins", "f", TUMBLING, ("city",), "city.bins.v1", "bins")
    with pytest.raises(ValueError, match="give domain and events, or inputs"):
        Family("bins", (kpi,), events=events)
    with pytest.raises(ValueError, match=re.escape("must start bins.")):
        Family("bins", (dataclasses.replace(kpi, name="waste.full"),), waste.FAMILY.domain, events)
    with pytest.raises(ValueError, match=re.escape("comes from city.bins.v1")):
        Family("bins", (dataclasses.replace(kpi, source_topic="x"),), waste.FAMILY.domain, events)
    assert isinstance(Family("bins", (kpi,), waste.FAMILY.domain, events).events, Events)


def test_every_family_names_its_independent_oracle() -> None:
    for family in FAMILIES:
        assert family.oracle is not None, family.name
        assert family.oracle.__module__.startswith("oracles."), family.name
