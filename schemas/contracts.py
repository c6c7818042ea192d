"""Data contracts: what each field of each Avro schema is, why it is kept, and for how long.

The contract lives in the schema itself (docs/privacy.md#data-contracts), as attributes Avro
allows on records and fields and ignores when it reads or writes data:

- on the record: ``citystream.purpose`` (why the data is collected, in words) and
  ``citystream.retention`` (how long it may be kept anywhere: an ISO 8601 duration such as
  ``P35D``, ``PT12H`` or ``P2W``, or ``forever``);
- on every field, nested records' fields included: ``citystream.classification`` (``none``,
  ``indirect``: identifies a person only with other data, or ``direct``) and
  ``citystream.purpose`` (one of :data:`PURPOSES`);
- on a personal field (indirect or direct), in addition: ``"confluent:tags": ["PII"]`` (the
  Confluent data-contract tag, so a registry's rules see it too) and ``citystream.allowed``,
  the places beyond the internal topics it may reach (:data:`DESTINATIONS`; ``[]``: none);
- optionally on a field, ``citystream.retention``: shorter than the record's;
- optionally on a personal field, ``citystream.protection``: how it is protected before it
  enters Kafka (:data:`PROTECTIONS`: ``pseudonym``, ``encrypted``, ``coarsened``).

A schema whose contract is incomplete or inconsistent is refused with every problem named
(:class:`ContractError`); the tests (tests/unit/test_contracts.py) run this over every schema
so that an untagged field fails CI. Stores keep data no longer than its contract: a topic's
``retention.ms`` and the ClickHouse TTLs are derived from it and may only be shorter.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any, Literal, cast

from schemas.catalog import AVRO_DIR, TopicSpec

Classification = Literal["none", "indirect", "direct"]
CLASSIFICATIONS: tuple[Classification, ...] = ("none", "indirect", "direct")

# Why a field is kept. A field serves one purpose; the report (docs/governance.md) groups by it.
PURPOSES: dict[str, str] = {
    "kpi": "an input to or part of a KPI's computation",
    "identity": "keys a record: partitioning, joins to reference data, deduplication",
    "lineage": "says where a record came from, for dead letters and reconciliation",
    "engine": "the stream engine's own state (partial sums, windows, stream time)",
    "publication": "a published KPI value and what it was computed from",
    "alerting": "tells operators and downstream services what needs attention",
    "diagnostics": "explains why input was rejected, so it can be corrected",
    "reference": "describes a city object (district, road, car park, category)",
    "audit": "accountability: who read or changed what, and proof the log is intact",
    "rights": "answers a resident's access or erasure request",
}

# Where a personal field may go beyond the internal topics, when its contract says so.
Destination = Literal["public-topic", "clickhouse", "public-api"]
DESTINATIONS: tuple[Destination, ...] = ("public-topic", "clickhouse", "public-api")

# How a personal field is protected at the edge (docs/privacy.md#at-the-edge).
PROTECTIONS: dict[str, str] = {
    "pseudonym": "replaced by a keyed HMAC-SHA256 pseudonym (key id carried for rotation)",
    "encrypted": "encrypted with its subject's own key, destroyed on erasure",
    "coarsened": "generalised (a district, a coarse cell, a truncated time)",
}

PII_TAG = "PII"
FOREVER = "forever"
_DURATION = re.compile(
    r"^P(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+)S)?)?$"
)


class ContractError(ValueError):
    """A schema's contract is missing or inconsistent; the message names every problem."""


def parse_retention(text: str) -> timedelta | None:
    """``forever`` is None; otherwise an ISO 8601 duration in weeks, days, hours, minutes and
    seconds. Months and years are refused: their length varies, a retention must not."""
    if text == FOREVER:
        return None
    match = _DURATION.match(text)
    if not match or text in ("P", "PT") or text.endswith("T"):
        raise ContractError(
            f"retention {text!r}: not an ISO 8601 duration (PnW, PnDTnHnMnS) or 'forever'"
        )
    parts = {k: int(v) for k, v in match.groupdict().items() if v}
    span = timedelta(**parts)
    if span <= timedelta(0):
        raise ContractError(f"retention {text!r} is not positive")
    return span


def retention_ms(span: timedelta | None) -> int:
    """Kafka's ``retention.ms``: -1 keeps forever."""
    return -1 if span is None else int(span.total_seconds() * 1000)


def shorter(a: timedelta | None, b: timedelta | None) -> timedelta | None:
    """The shorter of two retentions (None is forever)."""
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


@dataclass(frozen=True)
class FieldContract:
    """One field: ``path`` is dotted through nested records (``windows.groups.entity_id``)."""

    path: str
    classification: Classification
    purpose: str
    allowed: frozenset[str]
    retention: timedelta | None
    protection: str | None = None
    doc: str = ""

    @property
    def personal(self) -> bool:
        return self.classification != "none"

    def may_reach(self, destination: str) -> bool:
        """Whether this field may appear in ``destination`` (one of :data:`DESTINATIONS`)."""
        return not self.personal or destination in self.allowed


@dataclass(frozen=True)
class SchemaContract:
    schema_file: str
    name: str
    purpose: str
    retention: timedelta | None  # the record's: how long anything of it may be kept
    fields: tuple[FieldContract, ...]

    def field(self, path: str) -> FieldContract:
        for field in self.fields:
            if field.path == path:
                return field
        raise KeyError(f"{self.schema_file} has no field {path}")

    @property
    def personal_fields(self) -> tuple[FieldContract, ...]:
        return tuple(f for f in self.fields if f.personal)

    @property
    def storage_retention(self) -> timedelta | None:
        """How long a store of whole records (a topic, a table) may keep them: the shortest
        retention of the record and its fields, since a record cannot outlive a field."""
        span = self.retention
        for field in self.fields:
            span = shorter(span, field.retention)
        return span


def parse_contract(schema_file: str, schema: dict[str, Any]) -> SchemaContract:
    """The contract of ``schema``, or :class:`ContractError` naming every problem in it."""
    problems: list[str] = []
    purpose = schema.get("citystream.purpose")
    if not isinstance(purpose, str) or not purpose.strip():
        problems.append("record has no citystream.purpose")
    retention: timedelta | None = None
    raw_retention = schema.get("citystream.retention")
    if not isinstance(raw_retention, str):
        problems.append("record has no citystream.retention")
    else:
        try:
            retention = parse_retention(raw_retention)
        except ContractError as exc:
            problems.append(f"record: {exc}")
    fields: list[FieldContract] = []
    _walk(schema, "", retention, fields, problems)
    if problems:
        raise ContractError(f"{schema_file}: " + "; ".join(problems))
    return SchemaContract(
        schema_file=schema_file,
        name=str(schema.get("name", "")),
        purpose=cast(str, purpose),
        retention=retention,
        fields=tuple(fields),
    )


def _walk(
    record: dict[str, Any],
    prefix: str,
    record_retention: timedelta | None,
    out: list[FieldContract],
    problems: list[str],
) -> None:
    for raw in record.get("fields", []):
        path = f"{prefix}{raw.get('name')}"
        field = _field(raw, path, record_retention, problems)
        if field is not None:
            out.append(field)
        for nested in _nested_records(raw.get("type")):
            _walk(nested, f"{path}.", record_retention, out, problems)


def _nested_records(type_: Any) -> list[dict[str, Any]]:
    """Record types declared inside a field's type (through arrays, maps and unions)."""
    if isinstance(type_, list):
        return [r for t in type_ for r in _nested_records(t)]
    if not isinstance(type_, dict):
        return []
    if type_.get("type") == "record":
        return [type_]
    if type_.get("type") == "array":
        return _nested_records(type_.get("items"))
    if type_.get("type") == "map":
        return _nested_records(type_.get("values"))
    return []


def _field(
    raw: dict[str, Any], path: str, record_retention: timedelta | None, problems: list[str]
) -> FieldContract | None:
    before = len(problems)
    classification = raw.get("citystream.classification")
    if classification not in CLASSIFICATIONS:
        problems.append(
            f"field {path}: citystream.classification is {classification!r}, "
            f"not one of {', '.join(CLASSIFICATIONS)}"
        )
    purpose = raw.get("citystream.purpose")
    if purpose not in PURPOSES:
        problems.append(
            f"field {path}: citystream.purpose is {purpose!r}, not one of {', '.join(PURPOSES)}"
        )
    tags = raw.get("confluent:tags", [])
    personal = classification in ("indirect", "direct")
    if not isinstance(tags, list) or (PII_TAG in tags) != personal:
        problems.append(
            f"field {path}: confluent:tags {tags!r} must contain {PII_TAG!r} exactly when the "
            "field is personal (indirect or direct)"
        )
    allowed = raw.get("citystream.allowed")
    if personal and not isinstance(allowed, list):
        problems.append(
            f"field {path}: a personal field must say where it may go (citystream.allowed, "
            f"a list of {', '.join(DESTINATIONS)}; [] for internal topics only)"
        )
    elif allowed is not None and (
        not isinstance(allowed, list) or not set(allowed) <= set(DESTINATIONS)
    ):
        problems.append(f"field {path}: citystream.allowed {allowed!r} names unknown destinations")
    protection = raw.get("citystream.protection")
    if protection is not None and (not personal or protection not in PROTECTIONS):
        problems.append(
            f"field {path}: citystream.protection {protection!r} must be one of "
            f"{', '.join(PROTECTIONS)}, on a personal field"
        )
    retention = record_retention
    raw_retention = raw.get("citystream.retention")
    if raw_retention is not None:
        try:
            retention = parse_retention(str(raw_retention))
        except ContractError as exc:
            problems.append(f"field {path}: {exc}")
        if shorter(retention, record_retention) != retention:
            problems.append(f"field {path}: retention {raw_retention} outlives its record's")
    if len(problems) > before:
        return None
    return FieldContract(
        path=path,
        classification=cast(Classification, classification),
        purpose=cast(str, purpose),
        allowed=frozenset(allowed or ()),
        retention=retention,
        protection=cast(str | None, protection),
        doc=str(raw.get("doc", "")),
    )


def load_contracts(directory: Path = AVRO_DIR) -> dict[str, SchemaContract]:
    """Every schema's contract in ``directory``, keyed by file name; :class:`ContractError`
    names the problems of every schema that has any, not just the first."""
    contracts: dict[str, SchemaContract] = {}
    problems: list[str] = []
    for path in sorted(directory.glob("*.avsc")):
        try:
            contracts[path.name] = parse_contract(path.name, json.loads(path.read_text()))
        except ContractError as exc:
            problems.append(str(exc))
    if problems:
        raise ContractError("\n".join(problems))
    return contracts


@cache
def contract(schema_file: str) -> SchemaContract:
    """The contract of one of the shipped schemas; parsed once per process."""
    return parse_contract(schema_file, json.loads((AVRO_DIR / schema_file).read_text()))


def topic_retention(spec: TopicSpec) -> timedelta | None:
    """How long a topic keeps its messages: its schema's contract, or the topic's own
    ``retention_ms`` where that is shorter (a transport buffer); never longer than the
    contract. None is forever."""
    span = contract(spec.schema_file).storage_retention
    if spec.retention_ms is not None and spec.retention_ms >= 0:
        span = shorter(span, timedelta(milliseconds=spec.retention_ms))
    return span


def ttl_days(setting_days: int, span: timedelta | None) -> int:
    """A ClickHouse TTL in days (0: forever): the contract's retention by default; a setting
    (``setting_days`` > 0) may shorten it, never lengthen it. TTLs count whole days: a part
    day of a contract is dropped (P1DT12H keeps 1 day), and a contract under a day keeps 1."""
    bound = 0 if span is None else max(1, span.days)
    if setting_days <= 0:
        return bound
    return setting_days if bound == 0 else min(setting_days, bound)
