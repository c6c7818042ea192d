"""Reading the audit log back: records with their offsets, and the Merkle tree over them."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from core.audit_append import AUDIT_TOPIC, leaf_bytes
from core.kafka import end_offsets
from core.settings import Settings
from schemas.catalog import CORE_TOPICS, load_schema
from schemas.registry import SchemaRegistry
from schemas.serde import AvroSerde, SerdeError
from trust.merkle import MerkleLog, leaf_hash


@dataclass(frozen=True)
class LogRecord:
    """One record of the log as read: its offset, the decoded fields (None if undecodable)
    and its leaf bytes (the raw value when it does not decode: still a leaf, still hashed)."""

    offset: int
    record: dict[str, Any] | None
    leaf: bytes
    error: str | None = None


def decoder(settings: Settings, topic_name: str) -> AvroSerde:
    """A decode-only serde for one of the audit topics (registers nothing: an auditor may
    have read access only)."""
    schema = load_schema(CORE_TOPICS[topic_name].schema_file)
    no_id = 0xFFFFFFFF  # decode only: every record's writer schema is looked up by its id
    return AvroSerde(schema, no_id, SchemaRegistry(settings.registry_config()).writer_schema)


def read_values(
    settings: Settings, topic: str, timeout: float = 60.0, start: int = 0
) -> Iterator[tuple[int, bytes]]:
    """(offset, value) of the messages of partition 0 of ``topic`` from offset ``start`` up
    to its end now."""
    end = end_offsets(settings, topic).get(0, 0)
    if end <= start:
        return
    consumer = Consumer(
        settings.kafka_config(**{"group.id": "citystream-audit-read", "enable.auto.commit": False})
    )
    try:
        consumer.assign([TopicPartition(topic, 0, start or OFFSET_BEGINNING)])
        deadline = time.monotonic() + timeout
        last = start - 1
        while last + 1 < end:
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {topic} to offset {end} in {timeout}s")
            for msg in consumer.consume(1000, timeout=0.2):
                if msg.error() is not None:
                    raise RuntimeError(f"reading {topic}: {msg.error()}")
                offset = msg.offset() or 0
                if offset >= end:
                    continue
                last = offset
                yield offset, msg.value() or b""
    finally:
        consumer.close()


def read_log(settings: Settings, timeout: float = 60.0, start: int = 0) -> list[LogRecord]:
    """The records of the audit topic (``settings``' prefix) from offset ``start``, in order."""
    serde = decoder(settings, AUDIT_TOPIC)
    out = []
    for offset, value in read_values(settings, settings.topic(AUDIT_TOPIC), timeout, start):
        try:
            record = serde.decode(value)
        except SerdeError as exc:
            out.append(LogRecord(offset, None, value, f"undecodable: {exc}"))
            continue
        out.append(LogRecord(offset, record, leaf_bytes(record)))
    return out


def build_tree(records: list[LogRecord]) -> MerkleLog:
    """The Merkle log over ``records``' leaves, in order."""
    tree = MerkleLog()
    for r in records:
        tree.append_hash(leaf_hash(r.leaf))
    return tree


class LogView:
    """The audit log's Merkle tree kept in memory, brought up to date on demand: only the
    records appended since the last look are read (one partition: offsets are leaf
    indexes). The API's proofs and the interval checkpointer use one each."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.tree = MerkleLog()
        self.records: list[dict[str, Any] | None] = []  # by leaf index (None: undecodable)
        self._next_offset = 0
        self._lock = threading.Lock()

    def refresh(self) -> MerkleLog:
        """Read the records appended since the last refresh; returns the tree."""
        with self._lock:
            for record in read_log(self.settings, start=self._next_offset):
                self.tree.append_hash(leaf_hash(record.leaf))
                self.records.append(record.record)
                self._next_offset = record.offset + 1
            return self.tree
