"""Avro schemas of every citystream topic and the serde around them.

Both connectors and stream processors depend on this package; it depends on neither.
"""

from schemas.catalog import CORE_TOPICS, TopicSpec, load_schema
from schemas.serde import AvroSerde, SerdeError, UnknownSchemaError

__all__ = [
    "CORE_TOPICS",
    "AvroSerde",
    "SerdeError",
    "TopicSpec",
    "UnknownSchemaError",
    "load_schema",
]
