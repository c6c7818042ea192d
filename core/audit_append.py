"""Appending to the audit log: the record, its leaf bytes, and the durable write.

Here in ``core`` because every layer that serves data appends: the read API (``api``),
the sink's query endpoint (``connectors``), the rights and governance commands. The
Merkle tree, checkpoints, proofs and verification are ``trust.audit``'s.

The log is the topic ``city.audit.v1``: one partition, so the order of the records is
the log's order and a record's leaf index is its position; retention unlimited. A record
is Avro (``schemas/avro/audit_record.avsc``) and its **leaf bytes** are the canonical JSON
of its fields (:func:`leaf_bytes`: keys sorted, no whitespace, UTF-8, non-ASCII kept),
so an auditor with any JSON library recomputes the tree without Avro in the hash.

:meth:`AuditAppender.append` writes with an idempotent acks=all producer and waits for the
broker's acknowledgement: a record that is not durable raises :class:`AuditWriteError`,
and the caller fails the request it was auditing.
"""

from __future__ import annotations

import getpass
import json
import os
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from core.kafka import create_topics
from core.settings import Settings
from schemas.catalog import CORE_TOPICS, load_schema
from schemas.registry import SchemaRegistry
from schemas.serde import AvroSerde

AUDIT_TOPIC = "city.audit.v1"
CHECKPOINT_TOPIC = "city.audit.checkpoints.v1"
ACTIONS = ("read", "query", "export", "rights", "governance", "role_change")
RECORD_FIELDS = ("at_ms", "key_id", "role", "action", "endpoint", "parameters", "sql", "rows")


class AuditWriteError(RuntimeError):
    """The audit record was not acknowledged by Kafka: the audited request must fail."""


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace; values that are not JSON become strings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


@dataclass(frozen=True)
class AuditEntry:
    """One audit record: who (key id, role), what (action, endpoint, parameters or SQL),
    when (``at_ms``), and how many rows were returned."""

    role: str
    action: str
    endpoint: str
    parameters: Mapping[str, Any] = field(default_factory=dict)
    key_id: str | None = None
    sql: str | None = None
    rows: int = 0
    at_ms: int = 0  # 0: now, when appended

    def record(self) -> dict[str, Any]:
        """The Avro record (parameters as canonical JSON text)."""
        if self.action not in ACTIONS:
            raise ValueError(f"audit action {self.action!r} is not one of {', '.join(ACTIONS)}")
        return {
            "at_ms": self.at_ms or int(time.time() * 1000),
            "key_id": self.key_id,
            "role": self.role,
            "action": self.action,
            "endpoint": self.endpoint,
            "parameters": canonical_json(dict(self.parameters)),
            "sql": self.sql,
            "rows": int(self.rows),
        }


def action_of(endpoint: str, parameters: Mapping[str, Any]) -> str:
    """``export`` for a download (CSV, or an endpoint named export), else ``read``."""
    if "export" in endpoint or str(parameters.get("format", "")).lower() == "csv":
        return "export"
    return "read"


@dataclass(frozen=True)
class CallerContext:
    """Who reads through the sink's query endpoint, as the caller knows it: the key id and
    role, the action, the route or command, and its parameters. The endpoint records it as
    a claim (a loopback client could claim anything; docs/audit.md)."""

    key_id: str | None
    role: str
    endpoint: str
    parameters: Mapping[str, Any] = field(default_factory=dict)
    action: str = "read"

    def to_json(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "role": self.role,
            "action": self.action,
            "endpoint": self.endpoint,
            "parameters": dict(self.parameters),
        }

    @classmethod
    def from_json(cls, body: Any) -> CallerContext:
        """The context of a request's ``caller`` member; ValueError saying what is wrong."""
        if not isinstance(body, dict):
            raise ValueError("caller must be a JSON object")
        unknown = set(body) - {"key_id", "role", "action", "endpoint", "parameters"}
        if unknown:
            raise ValueError(f"caller: unknown member(s) {', '.join(sorted(unknown))}")
        key_id, parameters = body.get("key_id"), body.get("parameters") or {}
        role, endpoint, action = body.get("role"), body.get("endpoint"), body.get("action", "read")
        if key_id is not None and not isinstance(key_id, str):
            raise ValueError("caller.key_id must be a string or null")
        for name, value in (("role", role), ("endpoint", endpoint), ("action", action)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"caller.{name} must be a non-empty string")
        if action not in ACTIONS:
            raise ValueError(f"caller.action must be one of {', '.join(ACTIONS)}")
        if not isinstance(parameters, dict):
            raise ValueError("caller.parameters must be a JSON object")
        return cls(key_id, str(role), str(endpoint), parameters, str(action))


@dataclass
class AuditScope:
    """One caller's access in progress: its context, and the leaf indexes of the records the
    query endpoint appended for it (empty: nothing recorded it yet)."""

    caller: CallerContext
    leaves: list[int] = field(default_factory=list)


_SCOPE: ContextVar[AuditScope | None] = ContextVar("citystream_audit_scope", default=None)


@contextmanager
def audit_scope(caller: CallerContext) -> Iterator[AuditScope]:
    """Reads through the query endpoint inside the ``with`` carry ``caller`` and are noted
    in the yielded scope; the previous scope is restored after."""
    scope = AuditScope(caller)
    token = _SCOPE.set(scope)
    try:
        yield scope
    finally:
        _SCOPE.reset(token)


def enter_scope(caller: CallerContext) -> AuditScope:
    """Open a scope for the rest of the current context (an API request's task: the
    request's context is discarded with it, so nothing needs resetting)."""
    scope = AuditScope(caller)
    _SCOPE.set(scope)
    return scope


def current_scope() -> AuditScope | None:
    """The scope of the caller whose reads run now, if one was opened."""
    return _SCOPE.get()


def ensure_audit_topics(settings: Settings, timeout: float = 30.0) -> list[str]:
    """Create the audit log's two topics if missing (one partition each, kept forever)."""
    specs = [CORE_TOPICS[AUDIT_TOPIC], CORE_TOPICS[CHECKPOINT_TOPIC]]
    return create_topics(settings, specs, timeout)


def leaf_bytes(record: Mapping[str, Any]) -> bytes:
    """The Merkle leaf of a decoded record: canonical JSON of exactly its schema's fields."""
    return canonical_json({name: record[name] for name in RECORD_FIELDS}).encode("utf-8")


class AuditAppender:
    """Appends records to the audit topic and waits until Kafka has them.

    Thread-safe (the API calls it from its worker threads). Nothing connects until the first
    :meth:`append` (or :meth:`open`).
    """

    def __init__(self, settings: Settings, timeout_s: float | None = None) -> None:
        self.settings = settings
        self.topic = settings.topic(AUDIT_TOPIC)
        self.timeout_s = settings.audit_write_timeout_s if timeout_s is None else timeout_s
        self._producer: Producer | None = None
        self._serde: AvroSerde | None = None
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._poller: threading.Thread | None = None

    def _poll(self, producer: Producer) -> None:
        while not self._closed.is_set():
            producer.poll(0.05)

    def open(self) -> None:
        """Create the topics if missing, connect the producer and register the schema
        (idempotent)."""
        with self._lock:
            if self._serde is None:
                ensure_audit_topics(self.settings, self.timeout_s)
                registry = SchemaRegistry(self.settings.registry_config())
                schema = load_schema(CORE_TOPICS[AUDIT_TOPIC].schema_file)
                self._serde = AvroSerde(
                    schema, registry.register(self.topic, schema), registry.writer_schema
                )
            if self._producer is None:
                # idempotent, acks=all (the project's producer defaults); linger 0: one
                # record waits for nobody else's batch; librdkafka gives up when we do, so a
                # failed request's record is not written later
                timeout_ms = max(1000, int(self.timeout_s * 1000))
                self._producer = Producer(
                    self.settings.producer_config(
                        **{"linger.ms": 0, "acks": "all", "message.timeout.ms": timeout_ms}
                    )
                )
                # one thread serves every acknowledgement, so concurrent requests each wait
                # on their own event instead of taking turns in poll()
                self._closed.clear()
                self._poller = threading.Thread(
                    target=self._poll, args=(self._producer,), name="audit-acks", daemon=True
                )
                self._poller.start()

    def append(self, entry: AuditEntry) -> int:
        """Write ``entry``; returns its offset (= leaf index) once acknowledged.

        Raises :class:`AuditWriteError` when Kafka refuses it or does not acknowledge it
        within the timeout.
        """
        if self._producer is None or self._serde is None:
            try:
                self.open()
            except Exception as exc:
                raise AuditWriteError(f"audit log unreachable: {exc}") from exc
        assert self._producer is not None and self._serde is not None
        value = self._serde.encode(entry.record())
        outcome: dict[str, Any] = {}
        done = threading.Event()

        def delivered(err: KafkaError | None, msg: Message) -> None:
            outcome["error"], outcome["offset"] = err, msg.offset()
            done.set()

        try:
            self._producer.produce(self.topic, value, partition=0, on_delivery=delivered)
        except Exception as exc:  # BufferError (queue full), KafkaException
            raise AuditWriteError(f"audit record not queued for {self.topic}: {exc}") from exc
        if not done.wait(self.timeout_s):  # the poller thread serves the acknowledgement
            raise AuditWriteError(
                f"audit record not acknowledged by Kafka within {self.timeout_s}s"
            )
        if outcome["error"] is not None:
            raise AuditWriteError(f"audit record refused by Kafka: {outcome['error']}")
        return int(outcome["offset"])

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(self.timeout_s)
            self._closed.set()
            if self._poller is not None:
                self._poller.join()
            self._producer = self._poller = None


def local_caller() -> str:
    """Who runs a command on this machine: ``local:<OS user>`` (commands have no API key)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for the uid (e.g. a container's arbitrary uid)
        user = f"uid{os.getuid()}"
    return f"local:{user}"


def record_command(
    settings: Settings,
    action: str,
    endpoint: str,
    parameters: Mapping[str, Any],
    *,
    sql: str | None = None,
    rows: int = 0,
) -> int:
    """Audit one command (``citystream query``, ``rights``, a governance change) as the
    local operator; returns the record's leaf index. Raises :class:`AuditWriteError`: the
    command must then fail without showing or keeping its result."""
    appender = AuditAppender(settings)
    try:
        return appender.append(
            AuditEntry(
                role="operator",
                action=action,
                endpoint=endpoint,
                parameters=parameters,
                key_id=local_caller(),
                sql=sql,
                rows=rows,
            )
        )
    finally:
        appender.close()
