"""Reference data followed in the background, on the real stack (issue #12).

An unknown key must not make the hot path re-read the reference topic: each unknown key
costs at most one bounded catch-up, counted. A record published (and flushed) just before
the first reading that names it still counts for that reading, whatever the follower's
timing. Nothing here is timed: the bounds asserted are counts.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from citystream.dirty_input import UNKNOWN_ONLY, make_dirty
from connectors.publishing import Reading
from connectors.sources.aarhus import iter_readings, read_segments
from core.kafka import Publisher, partition_for
from core.settings import Settings
from families.registry import TOPICS, ensure_topics, register_schemas
from schemas.registry import SchemaRegistry
from streams.alerts.processor import AlertsProcessor
from streams.engine.processor import WindowedProcessor
from streams.reference import CompactedTable
from streams.worker import PROCESSORS
from tests.oracle import METADATA

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests/fixtures/traffic_2014-08-02_0600-0900.csv.gz"
SEGMENTS = "city.road_segments.v1"
BATCH = 500


class Reference:
    """Produces reference records with the project's serde, flushed (durable) on return."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = SchemaRegistry(settings.registry_config())
        self.publisher = Publisher.create(settings)

    def serde(self, name: str) -> Any:
        return self.registry.serde(self.settings.topic(name), TOPICS[name])

    def send(self, name: str, key: str, record: dict[str, Any] | None) -> None:
        value = None if record is None else self.serde(name).encode(record)
        self.publisher.producer.produce(self.settings.topic(name), value, key.encode())
        self.publisher.flush()

    def raw(self, name: str, key: str, payload: bytes) -> None:
        self.publisher.send(self.settings.topic(name), key.encode(), payload)
        self.publisher.flush()


def segment(segment_id: str, district: str) -> dict[str, Any]:
    return {
        "segment_id": segment_id, "name": "", "district": district,
        "free_flow_speed_kmh": 50.0, "length_m": None, "road_type": "", "start_lat": 56.1,
        "start_lon": 10.1, "end_lat": 56.2, "end_lon": 10.2,
    }  # fmt: skip


@pytest.fixture
def stack_topics(settings: Settings) -> Iterator[Settings]:
    ensure_topics(settings)
    register_schemas(settings)
    yield settings


def test_follower_applies_updates_and_tombstones_and_dead_letters_bad_records(
    stack_topics: Settings,
) -> None:
    s, ref = stack_topics, Reference(stack_topics)
    for sid, district in (("1", "8000"), ("2", "8200"), ("3", "8210")):
        ref.send(SEGMENTS, sid, segment(sid, district))
    rejected: list[tuple[str, str]] = []
    table = CompactedTable(
        s.kafka_config(), s.topic(SEGMENTS), ref.serde(SEGMENTS),
        lambda r: str(r["district"]), lambda payload, reason, detail, origin: rejected.append(
            (reason, origin)),
    )  # fmt: skip
    try:
        assert table.refresh() == 3 and table.data == {"1": "8000", "2": "8200", "3": "8210"}
        table.follow()
        before = table.data
        ref.send(SEGMENTS, "1", segment("1", "8270"))  # an update
        ref.send(SEGMENTS, "2", None)  # a retired segment
        ref.raw(SEGMENTS, "bad", b"not avro at all")
        ref.send(SEGMENTS, "4", segment("4", "8000"))  # a new one
        assert table.catch_up(timeout=30.0)
        assert table.data == {"1": "8270", "3": "8210", "4": "8000"}
        assert before == {"1": "8000", "2": "8200", "3": "8210"}, "a reader's snapshot changed"
        assert [reason for reason, _ in rejected] == ["undecodable"]
        assert rejected[0][1].startswith(f"{s.topic(SEGMENTS)}/")
        stats = table.stats
        assert (stats.loaded, stats.background_updates, stats.known) == (3, 3, 3)

        # an unknown key waits once; known keys and a key already waited for never do
        waits = stats.waits
        for _ in range(100):
            assert table.wait_for_keys(["1", "3", "missing"], timeout=30.0)
        assert stats.waits == waits + 1 and stats.unknown_keys == 1
        assert not table.needs_wait(["missing", "4"])
        assert stats.wait_timeouts == 0 and stats.follow_errors == 0
    finally:
        table.close()


def test_a_reference_topic_created_after_the_table_is_waited_for(settings: Settings) -> None:
    """The topic appears while the table is looking it up (a fresh namespace, a broker
    restarting): the table waits for it (bounded) instead of failing."""
    register_schemas(settings)
    topic = settings.topic(SEGMENTS)
    serde = SchemaRegistry(settings.registry_config()).serde(topic, TOPICS[SEGMENTS])
    table = CompactedTable(settings.kafka_config(), topic, serde, dict, lambda *a: None)
    outcome: list[Any] = []

    def load() -> None:
        try:
            outcome.append(table.refresh(timeout=60.0))
        except Exception as exc:  # reported below
            outcome.append(exc)

    loader = threading.Thread(target=load)
    loader.start()
    admin = AdminClient(settings.kafka_config())
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])[topic].result()
    loader.join(90)
    table.close()
    assert outcome == [0]


def batches(readings: list[Reading], partitions: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """Readings as the replay publishes them: column batches per partition, in file order."""
    buffers: dict[int, list[Reading]] = {}
    for r in readings:
        partition = partition_for(r.segment_id.encode(), partitions)
        buffer = buffers.setdefault(partition, [])
        buffer.append(r)
        if len(buffer) == BATCH:
            yield partition, columns(buffer)
            buffer.clear()
    for partition, buffer in buffers.items():
        if buffer:
            yield partition, columns(buffer)


def columns(readings: list[Reading]) -> dict[str, Any]:
    return {
        "source": "test",
        "segment_id": [r.segment_id for r in readings],
        "event_time_ms": [r.event_time_ms for r in readings],
        "vehicle_count": [r.vehicle_count for r in readings],
        "avg_speed_kmh": [r.avg_speed_kmh for r in readings],
        "origin": [r.origin for r in readings],
    }


def test_unknown_segments_cost_at_most_one_synchronous_read_each(
    stack_topics: Settings, tmp_path: Path
) -> None:
    """The traffic processor over a real fixture with 0.2 % of readings from segments that
    have no reference record: one catch-up per unknown segment at most, none timed out."""
    s, ref = stack_topics, Reference(stack_topics)
    segments, _ = read_segments(METADATA)
    for record in segments:
        ref.publisher.send(s.topic(SEGMENTS), record["segment_id"].encode(),
                           ref.serde(SEGMENTS).encode(record))  # fmt: skip
    ref.publisher.flush()
    made = make_dirty(FIXTURE, tmp_path / "unknown.csv.gz", UNKNOWN_ONLY)
    readings = [r for r in iter_readings(tmp_path / "unknown.csv.gz") if isinstance(r, Reading)]
    unknown = {(r.segment_id, r.event_time_ms) for r in readings if r.segment_id.startswith("9")}
    assert made.unknown_segments >= 10 and len(unknown) == made.unknown

    processor = WindowedProcessor(s, PROCESSORS["traffic"])
    processor.setup()
    try:
        asyncio.run(feed(processor, batches(readings, s.partitions)))
        stats = processor.stats.as_dict()
        assert stats["accepted"] == len(readings)
        assert stats["unknown_reference"] == len(unknown)
        assert stats["reference_unknown_keys"] == made.unknown_segments
        assert 1 <= stats["reference_waits"] <= made.unknown_segments
        assert stats["reference_wait_timeouts"] == 0
        assert stats["reference_known"] == len(segments)

        # A segment published (flushed) while the processor runs, just before its first
        # reading: the reading has its reference, as the replay's order promises.
        ref.send(SEGMENTS, "777777", segment("777777", "8999"))
        late = Reading("777777", readings[-1].event_time_ms, 3, 40.0, None, None, "OK", "x:1")
        asyncio.run(feed(processor, batches([late], s.partitions)))
        after = processor.stats.as_dict()
        assert after["unknown_reference"] == stats["unknown_reference"]
        assert processor.reference.data["777777"].district == "8999"
        assert after["reference_waits"] <= stats["reference_waits"] + 1
    finally:
        processor.close()


async def feed(processor: WindowedProcessor, items: Iterator[tuple[int, dict[str, Any]]]) -> None:
    for partition, batch in items:
        await processor.on_batch(0, partition, batch, f"test/{partition}")


def test_alerts_follow_categories_and_schedule_a_request_once_its_category_arrives(
    stack_topics: Settings,
) -> None:
    s, ref = stack_topics, Reference(stack_topics)
    processor = AlertsProcessor(s)
    processor.setup()
    requests = ref.serde("city.service_requests.v1")
    t0 = 1_406_959_200_000

    def request(rid: str, category: str) -> dict[str, Any]:
        event = {
            "event_id": f"{rid}:opened", "request_id": rid, "status": "opened",
            "category": category, "district": "8000", "event_time": t0, "opened_at": t0,
            "source": "test",
        }  # fmt: skip
        decoded: dict[str, Any] = requests.decode(requests.encode(event))
        return decoded

    async def scenario() -> None:
        # published just before its first request: known when the request is applied
        ref.send("city.service_categories.v1", "graffiti",
                 {"category": "graffiti", "name": "Graffiti", "sla_minutes": 60})  # fmt: skip
        await processor.on_request(0, 0, request("r1", "graffiti"), "test/0/0")
        assert not processor.sla.waiting and processor.sla.open["r1"].deadline == t0 + 3_600_000
        # not published yet: the request waits for its category without holding anything
        await processor.on_request(0, 1, request("r2", "benches"), "test/0/1")
        assert processor.sla.waiting == {"r2"}
        version = processor.categories.version
        ref.send("city.service_categories.v1", "benches",
                 {"category": "benches", "name": "Benches", "sla_minutes": 30})  # fmt: skip
        assert processor.categories.catch_up(timeout=30.0)
        assert processor.categories.version > version
        await processor.on_tick(set())
        assert not processor.sla.waiting and processor.sla.open["r2"].deadline == t0 + 1_800_000

    try:
        asyncio.run(scenario())
        stats = processor.stats_dict()
        # benches was unknown at its request; graffiti too if the follower had not applied
        # it yet. Each waited once at most; the test's own catch_up is one more.
        unknown = stats["service_categories_unknown_keys"]
        assert unknown in (1, 2) and stats["service_categories_waits"] == unknown + 1
        assert stats["service_categories_wait_timeouts"] == 0
        assert stats["road_segments_waits"] == 0
    finally:
        processor.close()
