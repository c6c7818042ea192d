"""The opt-out registry: a compacted topic of pseudonyms whose observations are not kept.

``city.privacy.optouts.v1`` (under the topic prefix) holds one record per opted-out
identifier, keyed by its pseudonym under the active key; the value (JSON) names the field
and the identifier's pseudonym under every key configured when it was recorded, so a
source keeps recognising it after a key rotation while the old key is still configured.
The raw identifier is never written. Compaction keeps the latest record per key, which
is all the registry needs (an opt-out is never deleted by compaction: no tombstones are
written).

Sources read the registry at start (:meth:`OptOuts.read`) and drop an opted-out
observation before it is published, counting it as ``opted_out`` in their report: it is
kept nowhere, not even in a dead letter.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from core.kafka import Publisher, create_topics, read_topic
from core.privacy.pseudonym import Pseudonymiser, key_id_of
from core.settings import Settings
from schemas.catalog import TopicSpec

TOPIC = "city.privacy.optouts.v1"
SPEC = TopicSpec(
    TOPIC,
    "",  # JSON values: {field, pseudonyms, recorded_at}; no Avro subject
    key="pseudonym of the identifier under the active key",
    doc="Opt-out registry: identifiers (as pseudonyms) whose observations are dropped at "
    "ingest; compacted",
    compacted=True,
)


@dataclass(frozen=True)
class OptOut:
    field: str
    pseudonyms: tuple[str, ...]  # under every key configured when recorded, active first
    recorded_at_ms: int

    def encode(self) -> bytes:
        return json.dumps(
            {"field": self.field, "pseudonyms": list(self.pseudonyms),
             "recorded_at": self.recorded_at_ms},
            separators=(",", ":"),
        ).encode()  # fmt: skip

    @classmethod
    def decode(cls, value: bytes) -> OptOut:
        data = json.loads(value)
        return cls(str(data["field"]), tuple(data["pseudonyms"]), int(data["recorded_at"]))


def ensure_topic(settings: Settings) -> None:
    create_topics(settings, [SPEC])


def record(settings: Settings, pseudonymiser: Pseudonymiser, field: str, value: str) -> OptOut:
    """Writes the opt-out of ``value`` (in ``field``), durable on return."""
    entry = OptOut(field, pseudonymiser.every(field, value), int(time.time() * 1000))
    ensure_topic(settings)
    publisher = Publisher.create(settings)
    publisher.send(settings.topic(TOPIC), entry.pseudonyms[0].encode(), entry.encode())
    publisher.flush()
    return entry


def read_all(settings: Settings) -> list[OptOut]:
    """Every record of the registry now (creating the topic when there is none yet)."""
    ensure_topic(settings)
    return [OptOut.decode(value) for value in read_topic(settings, settings.topic(TOPIC))]


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
