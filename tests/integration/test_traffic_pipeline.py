"""The spine end to end on the real stack: replay → Kafka → Faust → ClickHouse.

Expected KPIs are computed here from the CSV with code that shares nothing with the
processor, then compared with what the analysts' table holds.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from citystream.pipeline import Pipeline
from citystream.verify import stored_kpis
from connectors.sources.aarhus import AarhusReplaySource
from core.kafka import Publisher, end_offsets
from core.settings import Settings
from families.registry import ensure_topics, register_schemas
from oracles.aarhus_traffic import recompute
from oracles.compare import compare
from tests.oracle import METADATA, expected_kpis, kpis_in_clickhouse

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests/fixtures/traffic_2014-08-02_0600-0900.csv.gz"
BAD_ROWS = {
    "OK,74,NaN,668,74,2014-08-02T06:05:00,5,1,158324": "invalid_row",
    "OK,74,50,668,74,2014-08-02T06:05:00,-1,2,158324": "invalid_row",
    "OK,74,50,668,74,2014-08-02T25:05:00,5,3,158324": "invalid_timestamp",
    "OK,74,50,668,74,2014-08-02T06:05:00": "invalid_row",
}
UNKNOWN_ROW = "OK,80,40,1,80,2014-08-02T06:20:00,7,4,999999"


def build_input(tmp_path: Path) -> tuple[Path, list[list[str]]]:
    """The real fixture plus bad rows, a duplicate and an unknown segment, in time order."""
    with gzip.open(FIXTURE, "rt", newline="") as handle:
        lines = handle.read().splitlines()
    header, rows = lines[0], lines[1:]
    body = [*rows[:500], rows[10], *BAD_ROWS, UNKNOWN_ROW, *rows[500:]]
    path = tmp_path / "traffic_test.csv.gz"
    path.write_bytes(gzip.compress("\n".join([header, *body]).encode()))
    good = [r.split(",") for r in body if r not in BAD_ROWS]
    return path, good


def read_dead_letters(settings: Settings) -> list[dict[str, Any]]:
    """With confluent-kafka's own deserializer: our wire format is the standard one."""
    topic = settings.topic("city.dlq.v1")
    deserializer = AvroDeserializer(SchemaRegistryClient(settings.registry_config()))
    consumer = Consumer(settings.kafka_config(**{"group.id": "dlq-reader"}))
    ends = end_offsets(settings, topic)
    consumer.assign([TopicPartition(topic, p, 0) for p in ends])
    out: list[dict[str, Any]] = []
    while len(out) < sum(ends.values()):
        for msg in consumer.consume(1000, timeout=0.2):
            assert msg.error() is None
            ctx = SerializationContext(topic, MessageField.VALUE)
            out.append(deserializer(msg.value(), ctx))
    consumer.close()
    return out


def replay(settings: Settings, path: Path):
    source = AarhusReplaySource(settings, path, METADATA)
    source.setup()
    return source.run()


def test_replay_to_clickhouse_matches_independent_computation(
    settings: Settings, tmp_path: Path
) -> None:
    ensure_topics(settings)
    register_schemas(settings)
    traffic, good_rows = build_input(tmp_path)
    garbage = Publisher.create(settings)
    batches = settings.topic("city.traffic.batches.v1")
    garbage.send(batches, b"0", b"\x00\xff\xff\xff\xfe unknown schema id", 0)
    garbage.send(batches, b"1", b"not avro at all", 1)
    garbage.flush()

    pipeline = Pipeline(settings)
    try:
        pipeline.start()
        report = replay(settings, traffic)
        stats = pipeline.wait_caught_up(report.published, timeout=300)

        expected = expected_kpis(good_rows)
        actual = kpis_in_clickhouse(settings)
        # `citystream verify`, a second independent computation from the file, agrees
        verified = compare(recompute(traffic, METADATA, settings.partitions), stored_kpis(settings))
        assert verified.ok and verified.matched == len(expected), verified.summary()
        assert actual.keys() == expected.keys()
        for key, (value, samples) in expected.items():
            assert actual[key][0] == pytest.approx(value, rel=1e-9, abs=1e-9), key
            assert actual[key][1] == samples, key
        unknown = {k: v for k, v in actual.items() if k[1] == "district" and k[2] == "unknown"}
        assert [v for k, v in unknown.items() if k[0] == "traffic.vehicle_count"] == [(7.0, 1)]

        # reconciliation: every row read is accepted, a duplicate, late or dead-lettered
        dead = sum(report.dead_lettered.values())
        assert report.rows_read == len(good_rows) + len(BAD_ROWS)
        assert stats["duplicates"] == 1 and stats["late"] == 0 and stats["unknown_reference"] == 1
        assert stats["accepted"] + stats["duplicates"] + stats["late"] + dead == report.rows_read

        letters = read_dead_letters(settings)
        by_payload = {d["payload"].decode(errors="replace"): d for d in letters}
        for row, reason in BAD_ROWS.items():
            assert by_payload[row]["reason"] == reason
            assert by_payload[row]["component"] == "aarhus-replay"
            assert by_payload[row]["origin"].startswith("traffic_test.csv.gz:")
        junk = [d for d in letters if d["component"] == "traffic-processor"]
        assert sorted(d["reason"] for d in junk) == ["undecodable", "unknown_schema"]
        assert {d["payload"] for d in junk} == {
            b"\x00\xff\xff\xff\xfe unknown schema id",
            b"not avro at all",
        }

        # the same file again: every reading is late or a duplicate, no KPI changes
        again = replay(settings, traffic)
        stats2 = pipeline.wait_caught_up(report.published + again.published, timeout=300)
        assert stats2["accepted"] == stats["accepted"]
        assert stats2["late"] + stats2["duplicates"] - stats["duplicates"] == again.published
        assert kpis_in_clickhouse(settings) == actual
        assert (
            sum(1 for d in read_dead_letters(settings) if d["reason"] == "late") == stats2["late"]
        )
    finally:
        pipeline.stop()
