"""Schema registration and lookup through confluent-kafka's schema-registry client."""

from __future__ import annotations

import json
from typing import Any

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from schemas.catalog import CORE_TOPICS, TopicSpec, load_schema
from schemas.serde import AvroSerde, UnknownSchemaError

COMPATIBILITY = "BACKWARD"


class SchemaRegistry:
    """Subjects follow the TopicNameStrategy (``<topic>-value``), all BACKWARD compatible."""

    def __init__(self, conf: dict[str, Any]) -> None:
        self.client = SchemaRegistryClient(conf)
        self._writer_cache: dict[int, dict[str, Any]] = {}

    def register(self, topic: str, schema: dict[str, Any]) -> int:
        """Idempotent: the same schema gets the same id; an incompatible one is refused."""
        subject = f"{topic}-value"
        self._set_compatibility(subject)
        return int(self.client.register_schema(subject, Schema(json.dumps(schema), "AVRO")))

    def _set_compatibility(self, subject: str) -> None:
        """BACKWARD for ``subject``, also when another registrant sets it at the same time.

        Apicurio answers 409 "A rule named 'COMPATIBILITY' already exists" to the second of
        two concurrent first settings (the sink's audit consumer and its query endpoint's
        audit writer register the audit topic together); the rule exists by then, and a
        second PUT updates it, so it is asked once more.
        """
        try:
            self.client.set_compatibility(subject_name=subject, level=COMPATIBILITY)
        except SchemaRegistryError as exc:
            if exc.http_status_code != 409:
                raise
            self.client.set_compatibility(subject_name=subject, level=COMPATIBILITY)

    def is_compatible(self, topic: str, schema: dict[str, Any]) -> bool:
        subject = f"{topic}-value"
        try:
            return bool(self.client.test_compatibility(subject, Schema(json.dumps(schema), "AVRO")))
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:  # no subject yet: anything is compatible
                return True
            raise

    def serde(self, topic: str, base: TopicSpec | str | None = None) -> AvroSerde:
        """A serde for ``topic`` (prefixed) carrying the schema of ``base``.

        ``base`` is a catalogue entry (``families.registry.TOPICS[name]``), or the name of
        one of the core's topics (kpi, kpi batches, alerts, dead letters); a family's topic
        must be given as its entry, since only the registry knows the families.
        """
        spec = base if isinstance(base, TopicSpec) else _core_topic(base or topic)
        schema = load_schema(spec.schema_file)
        return AvroSerde(schema, self.register(topic, schema), self.writer_schema)

    def writer_schema(self, schema_id: int) -> dict[str, Any]:
        if schema_id not in self._writer_cache:
            try:
                found = self.client.get_schema(schema_id)
            except SchemaRegistryError as exc:
                if exc.http_status_code == 404:
                    raise UnknownSchemaError(
                        f"schema id {schema_id} is unknown to the registry"
                    ) from exc
                raise
            if not found.schema_str:
                raise UnknownSchemaError(f"schema id {schema_id} has no schema text")
            self._writer_cache[schema_id] = json.loads(found.schema_str)
        return self._writer_cache[schema_id]


def _core_topic(name: str) -> TopicSpec:
    try:
        return CORE_TOPICS[name]
    except KeyError:
        raise KeyError(
            f"{name} is not a core topic: pass its TopicSpec (families.registry.TOPICS[name])"
        ) from None
