"""Confluent wire format (magic byte, 4-byte schema id, Avro body) with fastavro.

Schemas are registered and looked up through confluent-kafka's ``SchemaRegistryClient``;
the bytes are identical to what confluent-kafka's ``AvroSerializer`` writes, so any
Confluent-compatible consumer can read our topics. We encode with fastavro directly
because the hot path needs one call per record without per-call schema handling.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from typing import Any

import fastavro

MAGIC_BYTE = 0
_HEADER = struct.Struct(">bI")

WriterSchemaLookup = Callable[[int], dict[str, Any]]


class SerdeError(ValueError):
    """A payload that cannot be decoded; ``reason`` is the dead-letter reason code."""

    reason = "undecodable"


class UnknownSchemaError(SerdeError):
    reason = "unknown_schema"


class AvroSerde:
    """Encodes and decodes one subject's records.

    Records written with another (compatible) schema id are decoded through Avro schema
    resolution against our reader schema, so old and new producers can run side by side.
    """

    def __init__(
        self,
        schema: dict[str, Any],
        schema_id: int,
        writer_schema_lookup: WriterSchemaLookup | None = None,
    ) -> None:
        self.schema_id = schema_id
        self._parsed = fastavro.parse_schema(schema)
        self._header = _HEADER.pack(MAGIC_BYTE, schema_id)
        self._lookup = writer_schema_lookup
        self._writers: dict[int, Any] = {}

    def encode(self, record: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        buf.write(self._header)
        fastavro.schemaless_writer(buf, self._parsed, record)
        return buf.getvalue()

    def decode(self, data: bytes | None) -> dict[str, Any]:
        if data is None or len(data) < _HEADER.size:
            raise SerdeError("payload shorter than the Confluent wire-format header")
        magic, schema_id = _HEADER.unpack_from(data)
        if magic != MAGIC_BYTE:
            raise SerdeError(f"unknown magic byte {magic}: not Confluent wire format")
        body = io.BytesIO(memoryview(data)[_HEADER.size :])
        try:
            if schema_id == self.schema_id:
                result = fastavro.schemaless_reader(body, self._parsed, None)
            else:
                result = fastavro.schemaless_reader(body, self._writer(schema_id), self._parsed)
        except SerdeError:
            raise
        except Exception as exc:  # fastavro raises many types for corrupt input
            raise SerdeError(f"Avro body does not match schema {schema_id}: {exc!r}") from exc
        if not isinstance(result, dict):
            raise SerdeError("decoded value is not a record")
        return result

    def _writer(self, schema_id: int) -> Any:
        if schema_id not in self._writers:
            if self._lookup is None:
                raise UnknownSchemaError(f"schema id {schema_id} is not ours, no registry")
            self._writers[schema_id] = fastavro.parse_schema(self._lookup(schema_id))
        return self._writers[schema_id]
