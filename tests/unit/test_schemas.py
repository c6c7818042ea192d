from __future__ import annotations

import re

import fastavro
import pytest

from core.kafka import murmur2, partition_for
from families.registry import TOPICS
from schemas.catalog import AVRO_DIR, load_schema
from schemas.faust_codec import AvroCodec, Undecodable
from schemas.serde import AvroSerde, SerdeError, UnknownSchemaError

KPI = {
    "kpi": "traffic.vehicle_count",
    "scope": "segment",
    "entity_id": "158324",
    "window_start": 1406872800000,
    "window_end": 1406873700000,
    "value": 12.0,
    "samples": 3,
    "revision": 0,
    "computed_at": 1406873700000,
}


@pytest.mark.parametrize("path", sorted(AVRO_DIR.glob("*.avsc")), ids=lambda p: p.name)
def test_every_schema_parses_and_is_namespaced(path) -> None:
    schema = load_schema(path.name)
    fastavro.parse_schema(schema)
    assert schema["namespace"].startswith("org.citystream.")
    assert schema.get("doc")


def test_every_topic_has_a_schema_and_a_versioned_name() -> None:
    for name, spec in TOPICS.items():
        assert (AVRO_DIR / spec.schema_file).is_file()
        assert re.fullmatch(r"city\.[a-z_.]+\.v[0-9]+", name)


def test_round_trip_keeps_every_field() -> None:
    serde = AvroSerde(load_schema("kpi_record.avsc"), 42)
    data = serde.encode(KPI)
    assert data[:5] == b"\x00\x00\x00\x00\x2a"  # magic byte, schema id 42 big-endian
    decoded = serde.decode(data)
    assert decoded["window_start"].timestamp() * 1000 == KPI["window_start"]
    assert {k: v for k, v in decoded.items() if "window" not in k and k != "computed_at"} == {
        k: v for k, v in KPI.items() if "window" not in k and k != "computed_at"
    }


@pytest.mark.parametrize("payload", [b"", b"\x00\x00", b"\x01\x00\x00\x00\x2a\x02", None])
def test_not_wire_format_is_a_serde_error(payload) -> None:
    with pytest.raises(SerdeError):
        AvroSerde(load_schema("kpi_record.avsc"), 42).decode(payload)


def test_truncated_body_is_a_serde_error() -> None:
    serde = AvroSerde(load_schema("kpi_record.avsc"), 42)
    with pytest.raises(SerdeError):
        serde.decode(serde.encode(KPI)[:-9])


def test_foreign_schema_id_without_registry_is_unknown_schema() -> None:
    serde = AvroSerde(load_schema("kpi_record.avsc"), 42)
    with pytest.raises(UnknownSchemaError) as err:
        serde.decode(b"\x00\x00\x00\x00\x07" + b"\x00" * 20)
    assert err.value.reason == "unknown_schema"


def test_faust_codec_turns_garbage_into_undecodable() -> None:
    codec = AvroCodec(AvroSerde(load_schema("kpi_record.avsc"), 42))
    assert codec.loads(codec.dumps(KPI))["samples"] == 3
    bad = codec.loads(b"garbage!")
    assert isinstance(bad, Undecodable) and bad.reason == "undecodable"
    assert bad.payload == b"garbage!"


def test_murmur2_matches_kafka_test_vectors() -> None:
    signed = lambda v: v - (1 << 32) if v >= 1 << 31 else v  # noqa: E731
    assert signed(murmur2(b"21")) == -973932308
    assert signed(murmur2(b"foobar")) == -790332482
    assert signed(murmur2(b"a-little-bit-long-string")) == -985981536
    assert 0 <= partition_for(b"158324", 6) < 6
