"""Two cities in one sink, built cheaply: the stack of the several-cities API and browser
tests (#15).

:func:`two_cities` gives Aarhus and Boston the namespaces ``citystream serve --city
cities/aarhus --city cities/boston`` gives them (pack, topic prefix ``<id>.`` under the
test's own prefix, database ``citystream_<id>``), as tests/integration/test_several_cities.py
does, and ONE in-process :class:`ClickHouseSink` holding both databases in one chDB
directory and answering reads on its query endpoint, like ``citystream sink clickhouse
--city ... --city ...``. It can hold more namespaces (``extra``: the demo's, for
the demo test in tests/api/test_several_cities.py), each in a database of its own.

Instead of a replay, a few KPI windows per city are written through the sink's own insert
(:func:`city_rows`): every value differs between the cities, so an answer with the other
city's data shows. Each served city also gets its two live topics (``city.kpi.v1``,
``city.alerts.v1``) with one raised alert, so ``/v1/alerts`` and ``/v1/stream`` have a
city of their own to show. The topics go when the stack does.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from api.config import city_of
from api.routes_map import city_features
from citystream.cli import city_namespace
from connectors.sinks.clickhouse import ClickHouseSink
from core.audit_append import ensure_audit_topics
from core.kafka import create_topics, register_subjects
from core.settings import Settings
from families.registry import TOPICS
from schemas.registry import SchemaRegistry
from tests.api.aarhus_stack import isolated
from tests.conftest import REPO, delete_topics_with_prefix

PACKS = {"aarhus": REPO / "cities" / "aarhus", "boston": REPO / "cities" / "boston"}
LIVE_TOPICS = ("city.kpi.v1", "city.alerts.v1")
WINDOWS = 4  # 15-minute windows of each city series
# Each city's first window and the base of its values: far apart, so nothing is shared.
FIRST = {
    "aarhus": datetime(2014, 8, 2, 8, 0, tzinfo=UTC),
    "boston": datetime(2015, 1, 15, 14, 0, tzinfo=UTC),
}
BASE = {"aarhus": 100.0, "boston": 500.0}
SAMPLES = 10  # above the public's suppression k (5): every value is shown


@dataclass
class TwoCities:
    """The deployment's settings (Kafka, the chDB directory, the sink's query port) and
    each served city's namespace, by id, Aarhus first."""

    settings: Settings
    cities: dict[str, Settings]
    sink: ClickHouseSink


def isolated_base(stack: Settings, data_dir: Path) -> Settings:
    """The deployment's settings: ``stack`` with a prefix, chDB directory and ports of its own."""
    return isolated(stack, data_dir)


def served_namespace(base: Settings, city: str) -> Settings:
    """``city``'s namespace as ``citystream serve --city`` derives it, under ``base``'s
    test prefix (so that runs on the shared stack do not meet)."""
    prefixed = base.model_copy(update={"topic_prefix": f"{base.topic_prefix}{city}."})
    return city_namespace(prefixed, PACKS[city])


def districts_of(namespace: Settings) -> list[str]:
    """The district ids the API's map draws for this city (its pack's)."""
    return [f.id for f in city_features(city_of(namespace).pack)["districts"]]


def segments_of(namespace: Settings) -> list[str]:
    return [f.id for f in city_features(city_of(namespace).pack)["segments"]]


def value(city: str, offset: float) -> float:
    return BASE[city] + offset


def window(city: str, i: int) -> datetime:
    return FIRST[city] + timedelta(minutes=15 * i)


def row(kpi: str, scope: str, entity: str, start: datetime, v: float) -> dict[str, Any]:
    return {"kpi": kpi, "scope": scope, "entity_id": entity, "window_start": start,
            "window_end": start + timedelta(minutes=15), "value": v, "samples": SAMPLES,
            "revision": 0, "computed_at": start}  # fmt: skip


def city_rows(city: str, namespace: Settings) -> list[dict[str, Any]]:
    """The city's KPI windows: vehicles for the city (and, in Aarhus only, per district;
    Boston counts no traffic per district, as its real data has none), air quality per
    district, congestion on Aarhus's first three segments."""
    rows = []
    districts = districts_of(namespace)
    for i in range(WINDOWS):
        start = window(city, i)
        rows.append(row("traffic.vehicle_count", "city", city, start, value(city, i)))
        for j, district in enumerate(districts):
            rows.append(row("air.aqi", "district", district, start, value(city, j + i / 10)))
            if city == "aarhus":
                vehicles = value(city, 10 * j + i)
                rows.append(row("traffic.vehicle_count", "district", district, start, vehicles))
        for j, segment in enumerate(segments_of(namespace)[:3]):
            rows.append(row("traffic.congestion_index", "segment", segment, start, j + i / 10))
    return rows


def alert_of(city: str) -> dict[str, Any]:
    at = window(city, WINDOWS - 1)
    return {"alert_id": f"congestion|{city}|1", "type": "congestion", "state": "raised",
            "scope": "city", "entity_id": city, "district": None, "since": at, "at": at,
            "message": f"test alert of {city}", "kpi_values": {}, "window_start": at}  # fmt: skip


def publish_alerts(cities: dict[str, Settings]) -> None:
    """One raised alert on each city's alerts topic (created with its KPI topic)."""
    specs = [TOPICS[name] for name in LIVE_TOPICS]
    for namespace in cities.values():
        create_topics(namespace, specs)
        register_subjects(namespace, specs)
    for city, namespace in cities.items():
        topic = namespace.topic("city.alerts.v1")
        serde = SchemaRegistry(namespace.registry_config()).serde(topic, "city.alerts.v1")
        producer = Producer(namespace.kafka_config())
        producer.produce(topic, serde.encode(alert_of(city)), f"congestion|{city}".encode())
        assert producer.flush(30) == 0, f"{city}'s alert not delivered"


@contextmanager
def two_cities(
    stack: Settings, base: Settings, extra: Sequence[tuple[str, Settings]] = ()
) -> Iterator[TwoCities]:
    """Aarhus and Boston in one sink under ``base`` (from :func:`isolated_base`: its own
    prefix, chDB directory and ports); ``extra``: more (city, namespace), data only."""
    cities = {city: served_namespace(base, city) for city in PACKS}
    namespaces = [*cities.items(), *extra]
    sink = ClickHouseSink(base, [namespace for _, namespace in namespaces])
    try:
        sink.setup()
        for city, namespace in namespaces:
            sink.write(city_rows(city, namespace), database=namespace.clickhouse_database)
        publish_alerts(cities)
        ensure_audit_topics(base)
        sink.start_query_endpoint()
        yield TwoCities(base, cities, sink)
    finally:
        sink.close()
        delete_topics_with_prefix(stack, base.topic_prefix)
