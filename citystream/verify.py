"""`citystream verify`: the oracles' inputs fetched, their KPIs compared with ClickHouse.

The recomputations themselves are the oracles (the ``oracles`` package: traffic, air and
parking, devices, the simulated domains), which share no code with the sources or the
processors and do no I/O. This module does their I/O: the KPI rows ClickHouse holds
(:func:`stored_kpis`), the raw topics ``city.traffic.v1`` and ``city.road_segments.v1``
as any subscriber sees them (`verify topics`, decoded with confluent-kafka's stock Avro
deserializer), and the simulator's events, regenerated from a seed or read back from the
domain topics (`verify simulator`). `verify aarhus` is citystream/audit.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from citystream.query import run_query
from core.kafka import end_offsets
from core.settings import Settings
from oracles import simulated
from oracles.aarhus_traffic import Reading, aggregate, epoch_ms, in_range, parse_instant
from oracles.compare import Comparison, Key, Value, compare
from oracles.simulated import TOPIC_KEYS, Event, drop_late

if TYPE_CHECKING:
    from connectors.sources.simulator import Reference, SimulationConfig


def stored_kpis(
    settings: Settings,
    kpi_prefix: str = "traffic.",
    since_ms: int | None = None,
    until_ms: int | None = None,
) -> dict[Key, Value]:
    """KPI rows in ClickHouse; with a range, those whose window starts in [since, until)."""
    where = f"startsWith(kpi, '{kpi_prefix}')"
    if since_ms is not None:
        where += f" AND window_start >= fromUnixTimestamp64Milli(toInt64({int(since_ms)}))"
    if until_ms is not None:
        where += f" AND window_start < fromUnixTimestamp64Milli(toInt64({int(until_ms)}))"
    _, rows = run_query(
        settings,
        "SELECT kpi, scope, entity_id, toUnixTimestamp64Milli(window_start), value, samples "
        f"FROM kpi FINAL WHERE {where}",
    )
    return {(r[0], r[1], r[2], int(r[3])): (float(r[4]), int(r[5])) for r in rows}


# --- from the raw topics --------------------------------------------------------------------


@dataclass
class TopicInput:
    """What the traffic oracle is fed from the topics, and how much could not be read."""

    readings: list[Reading] = field(default_factory=list)
    segments: dict[str, dict[str, str | None]] = field(default_factory=dict)
    undecodable: int = 0


UNDECODABLE = object()


def _topic_values(settings: Settings, topic: str) -> Iterator[tuple[Any, Any]]:
    """Every (key, decoded value) of ``topic`` up to its current end, partition by partition.

    Per-partition order is what the contract's duplicate and late rules depend on.
    """
    from confluent_kafka import Consumer, TopicPartition
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    decode = AvroDeserializer(SchemaRegistryClient(settings.registry_config()))
    context = SerializationContext(topic, MessageField.VALUE)
    conf = {"group.id": settings.group("citystream-verify"), "enable.auto.commit": False}
    consumer = Consumer(settings.kafka_config(**conf, **{"isolation.level": "read_committed"}))
    try:
        for partition, end in sorted(end_offsets(settings, topic).items()):
            consumer.assign([TopicPartition(topic, partition, 0)])
            position = 0
            while position < end:
                batch = consumer.consume(5000, timeout=1.0)
                if not batch:  # compaction may have removed the last offsets
                    position = consumer.position([TopicPartition(topic, partition)])[0].offset
                for msg in batch:
                    if msg.error() is not None:
                        raise RuntimeError(f"reading {topic}: {msg.error()}")
                    position = (msg.offset() or 0) + 1
                    if msg.value() is None:
                        yield msg.key(), None  # a tombstone
                        continue
                    try:
                        yield msg.key(), decode(msg.value(), context)
                    except Exception:  # counted and reported, never a KPI
                        yield msg.key(), UNDECODABLE
    finally:
        consumer.close()


def read_topics(settings: Settings) -> TopicInput:
    """Readings of ``city.traffic.v1`` and the latest segment of ``city.road_segments.v1``."""
    out = TopicInput()
    for key, segment in _topic_values(settings, settings.topic("city.road_segments.v1")):
        sid = key.decode() if isinstance(key, bytes) else str(key)
        if segment is None:
            out.segments.pop(sid, None)
        elif isinstance(segment, dict):
            out.segments[sid] = {
                "POINT_1_POSTAL_CODE": segment["district"],
                "NDT_IN_KMH": str(segment["free_flow_speed_kmh"]),
            }
    for _, reading in _topic_values(settings, settings.topic("city.traffic.v1")):
        if reading is UNDECODABLE or not isinstance(reading, dict):
            out.undecodable += 1
            continue
        out.readings.append(
            (
                reading["segment_id"],
                epoch_ms(reading["event_time"]),
                int(reading["vehicle_count"]),
                float(reading["avg_speed_kmh"]),
            )
        )
    return out


def verify_topics(
    settings: Settings, since_ms: int | None = None, until_ms: int | None = None
) -> tuple[TopicInput, Comparison]:
    """Recompute from the whole per-reading topic (dedup and lateness depend on what came
    before a window), then compare the windows that start in [since, until)."""
    data = read_topics(settings)
    expected = aggregate(
        data.readings,
        data.segments,
        settings.partitions,
        settings.window_minutes,
        settings.grace_minutes,
    )
    result = compare(
        in_range(expected, since_ms, until_ms),
        stored_kpis(settings, since_ms=since_ms, until_ms=until_ms),
    )
    return data, result


def run_verify_topics(settings: Settings, since: str | None, until: str | None) -> int:
    """`citystream verify topics`: print the comparison; 1 on any difference."""
    since_ms = parse_instant(since) if since else None
    until_ms = parse_instant(until) if until else None
    data, result = verify_topics(settings, since_ms, until_ms)
    print(
        f"read {len(data.readings):,} readings from {settings.topic('city.traffic.v1')} "
        f"({data.undecodable:,} undecodable, skipped), {len(data.segments):,} road segments"
    )
    print(result.summary())
    print("verify: OK" if result.ok else "verify: DIFFERENCES FOUND")
    record_result(settings, "traffic", result)
    return 0 if result.ok else 1


def record_result(settings: Settings, domain: str, result: Comparison) -> None:
    """Keep the domain's latest result where the read API shows it (/v1/status)."""
    from api.verification import save_result

    save_result(
        settings,
        domain,
        matched=result.matched,
        missing=len(result.missing),
        extra=len(result.extra),
        different=len(result.different),
    )


# --- the simulated domains -----------------------------------------------------------------


def simulated_events(config: SimulationConfig, reference: Reference) -> list[Event]:
    """Regenerate a simulation (connectors.sources.simulator) and keep what it publishes:
    everything but the malformed copies, which the source dead-letters."""
    from connectors.sources.simulator import simulate

    return [Event(e.topic, e.record) for e in simulate(config, reference) if e.fault != "malformed"]


def published_events(settings: Settings, timeout_s: float = 30.0) -> list[Event]:
    """Read the three domain topics back, each partition in order, up to its end offset."""
    return [Event(name, r) for name in TOPIC_KEYS for r in read_topic(settings, name, timeout_s)]


def read_topic(settings: Settings, name: str, timeout_s: float = 30.0) -> list[dict[str, Any]]:
    """Every record of a catalogue topic up to its end offsets, partition by partition."""
    from confluent_kafka import Consumer, TopicPartition

    from families.registry import TOPICS
    from schemas.registry import SchemaRegistry

    topic = settings.topic(name)
    serde = SchemaRegistry(settings.registry_config()).serde(topic, TOPICS[name])
    out: list[dict[str, Any]] = []
    for partition, end in sorted(end_offsets(settings, topic).items()):
        consumer = Consumer(settings.kafka_config(**{"group.id": "recompute-sim"}))
        consumer.assign([TopicPartition(topic, partition, 0)])
        read, deadline = 0, time.monotonic() + timeout_s
        try:
            while read < end:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{topic}/{partition}: read {read} of {end}")
                for msg in consumer.consume(min(1000, end - read), timeout=1.0):
                    if msg.error() is not None:
                        raise RuntimeError(f"{topic}/{partition}: {msg.error()}")
                    out.append(serde.decode(msg.value()))
                    read += 1
        finally:
            consumer.close()
    return out


def expected_for_simulation(
    config: SimulationConfig, reference: Reference, settings: Settings
) -> dict[Key, Value]:
    """What the processors should store for this simulation: late events left out."""
    window_ms, grace_ms = settings.window_minutes * 60_000, settings.grace_minutes * 60_000
    events = drop_late(
        simulated_events(config, reference), settings.partitions, window_ms, grace_ms
    )
    factors, sla = reference.emission_factors(), reference.sla_minutes()
    return simulated.recompute(events, factors, sla, window_ms)


def run_verify_simulation(settings: Settings, config: SimulationConfig) -> int:
    """`citystream verify simulator`: the simulation's KPIs against ClickHouse; 1 on any
    difference."""
    from connectors.sources.simulator import load_reference

    expected = expected_for_simulation(config, load_reference(), settings)
    stored: dict[Key, Value] = {}
    for domain in ("energy.", "waste.", "service."):
        stored.update(stored_kpis(settings, domain))
    result = compare(expected, stored)
    print(result.summary())
    print("verify: OK" if result.ok else "verify: DIFFERENCES FOUND")
    record_result(settings, "simulated", result)
    return 0 if result.ok else 1
