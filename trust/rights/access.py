"""Subject access: everything citystream holds about one 311 case, as a JSON export.

The case id the resident holds is pseudonymised under every configured key, and the
export lists, for those pseudonyms:

- ``events``: every lifecycle event on ``city.service_requests.v1`` (topic, partition,
  offset, the record), with its ``identity`` read back from the encrypted ``subject``
  field (``null`` once the case is erased: its key is gone);
- ``batches``: where the same events sit in the processor's input
  (``city.service_requests.batches.v1``, column-wise: message and index);
- ``dead_letters``: every dead letter naming one of the pseudonyms (reason, detail,
  origin, the minimised payload);
- ``aggregates``: the KPI rows its events counted in (KPI, scope, entity, window): the
  requests opened in the window of its opening, the response time and SLA rows of the
  window of its close, for its category, its district and the city;
- ``opted_out`` and ``key``: whether it opted out, whether its subject key still exists.

The raw case id appears in the export only as given and as read back from ``subject``.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from core.city import city_id
from core.kafka import end_offsets
from core.privacy.edge import pseudonymiser, subject_key_store
from core.privacy.optout import read_all
from core.privacy.subject_keys import KeyDestroyed, SubjectKeyStore
from core.settings import Settings
from families.registry import TOPICS
from families.service import TOPIC
from families.service.domain import OPENED, P50, P90, SLA_MET
from schemas.catalog import CORE_TOPICS
from schemas.registry import SchemaRegistry
from trust.rights.record import record_request

FIELD = "request_id"
BATCHES = "city.service_requests.batches.v1"
DLQ = "city.dlq.v1"
SCOPES = ("category", "district", "city")
Message = tuple[int, int, bytes]  # partition, offset, value


def access(settings: Settings, case_id: str) -> dict[str, Any]:
    """The export for ``case_id``; the request itself is recorded (without the raw id)."""
    pseudonyms = pseudonymiser(settings).every(FIELD, case_id)
    keys = subject_key_store(settings)
    registry = SchemaRegistry(settings.registry_config())
    events = _events(settings, registry, set(pseudonyms), keys)
    export: dict[str, Any] = {
        "format": "citystream-subject-access/1",
        "generated_at": _iso(int(time.time() * 1000)),
        "case": case_id,
        "pseudonyms": list(pseudonyms),
        "opted_out": _opted_out(settings, set(pseudonyms)),
        "key": "present" if any(keys.has(p) for p in pseudonyms) else "absent or erased",
        "events": events,
        "batches": _batches(settings, registry, set(pseudonyms)),
        "dead_letters": _dead_letters(settings, registry, pseudonyms),
        "aggregates": _aggregates(settings, events),
    }
    counts = {k: len(export[k]) for k in ("events", "batches", "dead_letters", "aggregates")}
    record_request(settings, "access", pseudonyms, counts)
    return export


def _events(
    settings: Settings, registry: SchemaRegistry, wanted: set[str], keys: SubjectKeyStore
) -> list[dict[str, Any]]:
    topic = settings.topic(TOPIC)
    serde = registry.serde(topic, TOPICS[TOPIC])
    out = []
    for partition, offset, value in _messages(settings, topic):
        record = serde.decode(value)
        if record.get(FIELD) not in wanted:
            continue
        out.append(
            {
                "topic": topic,
                "partition": partition,
                "offset": offset,
                "event_time_ms": _ms(record["event_time"]),
                "record": _jsonable(record),
                "identity": _identity(keys, record),
            }
        )
    return out


def _identity(keys: SubjectKeyStore, record: dict[str, Any]) -> str | None:
    """The raw case id read back from the event, or None (erased, or never encrypted)."""
    token = record.get("subject")
    if not token:
        return None
    try:
        return keys.decrypt(record[FIELD], token)
    except KeyDestroyed:
        return None


def _batches(
    settings: Settings, registry: SchemaRegistry, wanted: set[str]
) -> list[dict[str, Any]]:
    topic = settings.topic(BATCHES)
    serde = registry.serde(topic, TOPICS[BATCHES])
    out = []
    for partition, offset, value in _messages(settings, topic):
        ids = serde.decode(value).get(FIELD) or []
        for index, rid in enumerate(ids):
            if rid in wanted:
                out.append({"topic": topic, "partition": partition, "offset": offset,
                            "index": index})  # fmt: skip
    return out


def _dead_letters(
    settings: Settings, registry: SchemaRegistry, pseudonyms: tuple[str, ...]
) -> list[dict[str, Any]]:
    topic = settings.topic(DLQ)
    serde = registry.serde(topic, CORE_TOPICS[DLQ])
    needles = [p.encode() for p in pseudonyms]
    out = []
    for partition, offset, value in _messages(settings, topic):
        if not any(n in value for n in needles):  # Avro strings and bytes are verbatim
            continue
        letter = serde.decode(value)
        out.append({"topic": topic, "partition": partition, "offset": offset,
                    "letter": _jsonable(letter)})  # fmt: skip
    return out


def _aggregates(settings: Settings, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The KPI rows the case's events counted in (the service family's rules)."""
    window_ms = settings.window_minutes * 60_000
    city = city_id(settings.city) if settings.city is not None else "aarhus"
    rows: dict[tuple[str, str, str, int], None] = {}
    for event in events:
        record = event["record"]
        at = int(event["event_time_ms"])
        start = at - at % window_ms
        kpis = (OPENED,) if record["status"] == "opened" else (P50, P90, SLA_MET)
        if record["status"] not in ("opened", "closed"):
            continue
        entities = {"category": record["category"], "district": record["district"], "city": city}
        for kpi in kpis:
            for scope in SCOPES:
                rows[(kpi, scope, entities[scope], start)] = None
    return [
        {"kpi": k, "scope": s, "entity_id": e, "window_start": _iso(w),
         "table": "kpi (and kpi_latest, kpi_daily)"}
        for k, s, e, w in rows
    ]  # fmt: skip


def _opted_out(settings: Settings, pseudonyms: set[str]) -> bool:
    return any(set(entry.pseudonyms) & pseudonyms for entry in read_all(settings))


def _messages(settings: Settings, topic: str, timeout_s: float = 60.0) -> Iterator[Message]:
    """Every message of ``topic`` up to its end offsets now, with its position."""
    ends = {p: end for p, end in end_offsets(settings, topic).items() if end > 0}
    if not ends:
        return
    consumer = Consumer(
        settings.kafka_config(**{"group.id": settings.group("citystream-rights"),
                                 "enable.auto.commit": False})
    )  # fmt: skip
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        deadline = time.monotonic() + timeout_s
        while ends:
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {topic} to its end in {timeout_s}s")
            for msg in consumer.consume(1000, timeout=0.5):
                if msg.error() is not None:
                    raise RuntimeError(f"{topic}: {msg.error()}")
                partition, offset = msg.partition() or 0, msg.offset() or 0
                if offset + 1 >= ends.get(partition, 0):
                    ends.pop(partition, None)
                value = msg.value()
                if value is not None:
                    yield partition, offset, value
    finally:
        consumer.close()


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(value).decode()}
    return value


def _ms(value: datetime | int) -> int:
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    return int(value)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()
