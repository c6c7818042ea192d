"""The opt-out registry: a compacted topic of pseudonyms whose observations are not kept.

``city.privacy.optouts.v1`` (under the topic prefix) holds one record per opted-out
identifier, keyed by its pseudonym under the active key; the value (Avro,
``privacy_optout.avsc``, with its data contract) names the field
and the identifier's pseudonym under every key configured when it was recorded, so a
source keeps recognising it after a key rotation while the old key is still configured.
The raw identifier is never written. Compaction keeps the latest record per key, which
is all the registry needs (an opt-out is never deleted by compaction: no tombstones are
written).

Sources drop an opted-out observation before it is published, counting it as
``opted_out`` in their report: it is kept nowhere, not even in a dead letter. A file
replay reads the registry at start (:meth:`OptOuts.read`); a long-running source (the MQTT
and HTTP ingest) follows it (:class:`FollowedOptOuts`, the background follower of
:mod:`core.compacted` that the processors use for reference data), so an opt-out recorded
while it runs applies as soon as the follower has read it: well within a second on a
healthy cluster, without a restart.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from core.compacted import CompactedTable
from core.kafka import Publisher, create_topics, read_topic
from core.privacy.pseudonym import Pseudonymiser, key_id_of
from core.settings import Settings
from schemas.catalog import CORE_TOPICS
from schemas.registry import SchemaRegistry

log = logging.getLogger(__name__)
TOPIC = "city.privacy.optouts.v1"
SPEC = CORE_TOPICS[TOPIC]  # schemas/avro/privacy_optout.avsc, with its data contract


@dataclass(frozen=True)
class OptOut:
    field: str
    pseudonyms: tuple[str, ...]  # under every key configured when recorded, active first
    recorded_at_ms: int

    def record(self) -> dict[str, Any]:
        """The Avro record."""
        return {"field": self.field, "pseudonyms": list(self.pseudonyms),
                "recorded_at": self.recorded_at_ms}  # fmt: skip

    @classmethod
    def of(cls, record: dict[str, Any]) -> OptOut:
        at = record["recorded_at"]
        ms = int(at.timestamp() * 1000) if isinstance(at, datetime) else int(at)
        return cls(str(record["field"]), tuple(record["pseudonyms"]), ms)


def ensure_topic(settings: Settings) -> None:
    create_topics(settings, [SPEC])


def record(settings: Settings, pseudonymiser: Pseudonymiser, field: str, value: str) -> OptOut:
    """Writes the opt-out of ``value`` (in ``field``), durable on return."""
    entry = OptOut(field, pseudonymiser.every(field, value), int(time.time() * 1000))
    ensure_topic(settings)
    topic = settings.topic(TOPIC)
    serde = SchemaRegistry(settings.registry_config()).serde(topic, SPEC)
    publisher = Publisher.create(settings)
    publisher.send(topic, entry.pseudonyms[0].encode(), serde.encode(entry.record()))
    publisher.flush()
    return entry


def read_all(settings: Settings) -> list[OptOut]:
    """Every record of the registry now (creating the topic when there is none yet)."""
    ensure_topic(settings)
    topic = settings.topic(TOPIC)
    serde = SchemaRegistry(settings.registry_config()).serde(topic, SPEC)
    return [OptOut.of(serde.decode(value)) for value in read_topic(settings, topic)]


@dataclass
class OptOuts:
    """The registry as a source applies it: opted-out pseudonyms by field."""

    by_field: dict[str, set[str]] = field(default_factory=dict)
    key_ids: dict[str, set[str]] = field(default_factory=dict)  # field -> key ids seen

    @classmethod
    def of(cls, entries: Iterable[OptOut]) -> OptOuts:
        out = cls()
        for entry in entries:
            out.by_field.setdefault(entry.field, set()).update(entry.pseudonyms)
            out.key_ids.setdefault(entry.field, set()).update(map(key_id_of, entry.pseudonyms))
        return out

    @classmethod
    def read(cls, settings: Settings) -> OptOuts:
        return cls.of(read_all(settings))

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_field.values())

    def excludes(self, field: str, pseudonym: str, pseudonymiser: Pseudonymiser,
                 value: str) -> bool:  # fmt: skip
        """Whether ``value`` (pseudonymised as ``pseudonym``) has opted out of ``field``.

        Recorded under an older key only: recomputed under each such key still configured.
        """
        known = self.by_field.get(field)
        if not known:
            return False
        if pseudonym in known:
            return True
        older = self.key_ids[field] - {key_id_of(pseudonym)}
        return any(
            pseudonymiser.under(k, field, value) in known
            for k in older
            if k in pseudonymiser.key_ids
        )


class FollowedOptOuts:
    """The registry as a long-running source applies it: read to its end by :meth:`start`,
    then followed on a background thread until :meth:`close`.

    :meth:`excludes` answers from the latest records the follower has applied; the
    :class:`OptOuts` view is rebuilt only when the table's version changes.
    """

    def __init__(self, table: CompactedTable) -> None:
        self.table = table
        self._view = OptOuts()
        self._version = -1

    @classmethod
    def start(cls, settings: Settings, timeout: float = 30.0) -> FollowedOptOuts:
        """The registry read to its end now (the topic created if missing), then followed."""
        ensure_topic(settings)
        topic = settings.topic(TOPIC)
        serde = SchemaRegistry(settings.registry_config()).serde(topic, SPEC)
        table = CompactedTable(settings.kafka_config(), topic, serde, OptOut.of, _unreadable)
        table.refresh(timeout)
        table.follow()
        return cls(table)

    def current(self) -> OptOuts:
        """The opt-outs applied so far (a snapshot: the follower swaps the table whole)."""
        version = self.table.version
        if version != self._version:
            self._view = OptOuts.of(self.table.data.values())
            self._version = version
        return self._view

    def __len__(self) -> int:
        return len(self.current())

    def excludes(self, field: str, pseudonym: str, pseudonymiser: Pseudonymiser,
                 value: str) -> bool:  # fmt: skip
        """As :meth:`OptOuts.excludes`, on the registry as followed so far."""
        return self.current().excludes(field, pseudonym, pseudonymiser, value)

    def close(self) -> None:
        self.table.close()


def _unreadable(_payload: bytes, reason: str, detail: str, origin: str) -> None:
    """A registry record that does not decode: skipped and logged (only its place)."""
    log.error("opt-out registry record %s not applied: %s (%s)", origin, reason, detail)
