"""What the MQTT and HTTP ingest connectors share: canonical event models, the mapping file,
unit conversion and the one validation path every incoming event goes through.

Every source turns its payload into a *canonical event dict* (``domain`` + the fields of
that domain's model), and :func:`validate_event` turns that into a :class:`Reading` or a
:class:`Rejected` with a stable reason code. A domain is one pydantic model plus one
:class:`DomainSpec`; adding air quality or parking is a new model, a new spec row here,
an ``EventPublisher`` method and rows in the mapping file (no connector code changes).
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    Strict,
    StringConstraints,
    ValidationError,
    field_validator,
)

from connectors.publishing import Reading, Rejected

# --- dead-letter reasons (README "Ingest") -----------------------------------------------

INVALID_JSON = "invalid_json"
INVALID_EVENT = "invalid_event"
INVALID_TIMESTAMP = "invalid_timestamp"
FUTURE_TIMESTAMP = "future_timestamp"
WRONG_UNIT = "wrong_unit"
UNKNOWN_DOMAIN = "unknown_domain"
UNKNOWN_DATASTREAM = "unknown_datastream"
UNKNOWN_ENTITY = "unknown_entity"
INCOMPLETE_OBSERVATION = "incomplete_observation"


class IngestError(ValueError):
    """An input that cannot become a canonical event; ``reason`` is the dead-letter code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


# --- canonical event models ------------------------------------------------------------

Count = Annotated[int, Strict(), Field(ge=0, le=10_000_000)]
Seconds = Annotated[int, Strict(), Field(ge=0, le=86_400)]
SensorId = Annotated[str, Strict(), StringConstraints(strip_whitespace=True, min_length=1)]


def parse_time(value: object, assume_utc: bool = False) -> datetime:
    """ISO 8601 instant (or interval ``a/b``: its end) as an aware datetime.

    A time without offset is refused unless ``assume_utc`` (NGSI-LD mandates UTC).
    """
    if not isinstance(value, str):
        raise ValueError(f"expected an ISO 8601 string, got {type(value).__name__}")
    text = value.strip().rpartition("/")[2]
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"unparseable time {value!r}") from exc
    if parsed.tzinfo is None:
        if not assume_utc:
            raise ValueError(f"time {value!r} has no UTC offset")
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


class TrafficEvent(BaseModel):
    """A traffic reading as clients send it (``POST /v1/events``, MQTT plain JSON)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, title="TrafficEvent")

    domain: Literal["traffic"]
    segment_id: SensorId = Field(description="Road segment id (Aarhus REPORT_ID)")
    event_time: datetime = Field(
        description="End of the counting interval, ISO 8601 with offset (e.g. ...Z)"
    )
    vehicle_count: Count = Field(description="Vehicles counted in the interval")
    avg_speed_kmh: Annotated[float, Strict(), Field(ge=0, le=400)] = Field(
        description="Mean speed of the counted vehicles, km/h"
    )
    avg_measured_time_s: Seconds | None = None
    median_measured_time_s: Seconds | None = None
    status: Annotated[str, Strict(), StringConstraints(max_length=32)] = "OK"

    @field_validator("event_time", mode="before")
    @classmethod
    def _time(cls, value: object) -> datetime:
        return parse_time(value)


@dataclass(frozen=True)
class DomainSpec:
    """How mappings fill a domain's canonical model: its sensor field and unit kinds."""

    model: type[BaseModel]
    sensor_field: str
    quantities: dict[str, str]  # canonical field -> unit kind (see UNITS)
    required: tuple[str, ...]  # value fields an observation must complete


DOMAINS: dict[str, DomainSpec] = {
    "traffic": DomainSpec(
        TrafficEvent,
        sensor_field="segment_id",
        quantities={
            "vehicle_count": "count",
            "avg_speed_kmh": "speed",
            "avg_measured_time_s": "duration",
            "median_measured_time_s": "duration",
        },
        required=("vehicle_count", "avg_speed_kmh"),
    ),
}

# Unit symbols (UCUM-ish, as in SensorThings unitOfMeasurement) and UN/CEFACT codes (as in
# NGSI-LD unitCode) -> factor to the canonical unit of that kind.
UNITS: dict[str, dict[str, float]] = {
    "count": {"1": 1.0, "C62": 1.0, "vehicles": 1.0, "{vehicle}": 1.0, "veh": 1.0},
    "speed": {
        "km/h": 1.0,
        "KMH": 1.0,
        "m/s": 3.6,
        "MTS": 3.6,
        "mph": 1.609344,
        "[mi_i]/h": 1.609344,
        "HM": 1.609344,
    },
    "duration": {"s": 1.0, "SEC": 1.0, "min": 60.0, "MIN": 60.0},
}


def convert(value: object, kind: str, unit: str | None, what: str) -> object:
    """``value`` in ``unit`` to the canonical unit of ``kind`` (counts stay whole numbers)."""
    if unit is not None and unit not in UNITS[kind]:
        raise IngestError(WRONG_UNIT, f"{what}: unit {unit!r} is not a {kind} unit")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value  # the model reports the wrong type
    if isinstance(value, float) and not math.isfinite(value):
        return value  # the model reports NaN/inf
    factor = UNITS[kind][unit] if unit is not None else 1.0
    if kind in ("count", "duration"):
        scaled = value * factor
        if isinstance(scaled, float) and scaled.is_integer():
            return int(scaled)
        return scaled
    return float(value) * factor


# --- validation: canonical dict -> Reading ---------------------------------------------


def event_id(domain: str, sensor: str, event_time_ms: int) -> str:
    """Deterministic id of an event; the processor de-duplicates on the same key."""
    return f"{domain}:{sensor}:{event_time_ms}"


def _errors(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'event'}: {e['msg']}" for e in exc.errors()
    )


@dataclass(frozen=True, slots=True)
class Accepted:
    reading: Reading
    event_id: str


def validate_event(
    data: object, origin: str, raw: bytes | str, now_ms: int, max_future_ms: int
) -> Accepted | Rejected:
    """The single gate every ingested event passes: model, then time sanity."""
    if not isinstance(data, dict):
        return Rejected(INVALID_EVENT, "an event must be a JSON object", origin, raw)
    domain = data.get("domain")
    spec = DOMAINS.get(domain) if isinstance(domain, str) else None
    if spec is None:
        known = ", ".join(sorted(DOMAINS))
        return Rejected(UNKNOWN_DOMAIN, f"domain {domain!r} is not one of: {known}", origin, raw)
    try:
        model = spec.model.model_validate(data)
    except ValidationError as exc:
        timing = any(e["loc"][:1] == ("event_time",) for e in exc.errors())
        return Rejected(INVALID_TIMESTAMP if timing else INVALID_EVENT, _errors(exc), origin, raw)
    assert isinstance(model, TrafficEvent)  # the only domain so far
    event_ms = int(model.event_time.timestamp() * 1000)
    if event_ms > now_ms + max_future_ms:
        ahead = (event_ms - now_ms) / 1000
        return Rejected(FUTURE_TIMESTAMP, f"event_time is {ahead:.0f}s in the future", origin, raw)
    reading = Reading(
        segment_id=model.segment_id,
        event_time_ms=event_ms,
        vehicle_count=model.vehicle_count,
        avg_speed_kmh=model.avg_speed_kmh,
        avg_measured_time_s=model.avg_measured_time_s,
        median_measured_time_s=model.median_measured_time_s,
        status=model.status,
        origin=origin,
    )
    return Accepted(reading, event_id("traffic", model.segment_id, event_ms))


def loads(raw: bytes | str) -> Any:
    """JSON, with NaN/Infinity read as floats so the model can reject them per item."""
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise IngestError(INVALID_JSON, f"not JSON: {exc}") from exc


def validate_items(
    items: list[tuple[Any, bytes]], origin: str, now_ms: int, max_future_ms: int
) -> list[Accepted | Rejected]:
    """Every item of a body (from :func:`split_items`) through :func:`validate_event`."""
    out: list[Accepted | Rejected] = []
    for i, (item, raw) in enumerate(items):
        where = f"{origin}#{i}"
        if isinstance(item, IngestError):
            out.append(Rejected(item.reason, str(item), where, raw))
        else:
            out.append(validate_event(item, where, raw, now_ms, max_future_ms))
    return out


def split_items(raw: bytes, ndjson: bool | None = None) -> list[tuple[Any, bytes]]:
    """A body of events as (parsed item or IngestError, the item's own bytes).

    ``ndjson`` None guesses: a body starting with ``[`` is a JSON array, one line is one
    object, several lines are NDJSON. A bad NDJSON line spoils only itself; an array that
    does not parse spoils the whole body (IngestError is raised).
    """
    text = raw.strip()
    if ndjson is None:
        ndjson = not text.startswith(b"[") and b"\n" in text
    if not ndjson and not text.startswith(b"["):
        return [(_item(text), text)]
    if ndjson:
        return [(_item(line), line) for line in (ln.strip() for ln in text.split(b"\n")) if line]
    items = loads(text)
    if not isinstance(items, list):
        raise IngestError(INVALID_JSON, "expected a JSON array of events")
    return [(item, dumps(item)) for item in items]


def _item(line: bytes) -> Any:
    try:
        return loads(line)
    except IngestError as exc:
        return exc


def dumps(value: object) -> bytes:
    """An item's JSON for its dead letter (NaN kept as written)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


# --- the mapping file ------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Subscription(_Strict):
    filter: str
    format: Literal["sensorthings", "events"]


class MqttConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = "citystream-mqtt-ingest"
    keepalive_s: int = Field(30, ge=5)
    qos: Literal[0, 1] = 1
    persistent_session: bool = True
    reconnect_min_s: int = Field(1, ge=1)
    reconnect_max_s: int = Field(30, ge=1)
    subscriptions: list[Subscription] = Field(
        default_factory=lambda: [
            Subscription(filter="v1.1/+/Observations", format="sensorthings"),
            Subscription(filter="citystream/events/#", format="events"),
        ]
    )
    flush_every: int = Field(2000, ge=1, description="messages between Kafka flushes + acks")
    flush_interval_ms: int = Field(100, ge=1)
    dedup_window: int = Field(100_000, ge=1, description="recent messages remembered")
    join_timeout_s: float = Field(60.0, gt=0)
    status_topic: str = Field(
        "citystream/ingest/{client_id}/status",
        description="retained JSON: online + counters, offline (also the last will)",
    )
    status_interval_s: float = Field(1.0, gt=0)


class DatastreamMapping(_Strict):
    """One SensorThings Datastream: which sensor and domain, and what its result fills.

    Either ``result`` (the result is an object: member name -> canonical field) or
    ``field`` (the result is a scalar for that one canonical field). ``units`` /
    ``unit`` say what the Datastream's unitOfMeasurement is, per canonical field.
    """

    id: str
    domain: str
    sensor: str
    result: dict[str, str] | None = None
    field: str | None = None
    units: dict[str, str] = Field(default_factory=dict)
    unit: str | None = None

    @field_validator("id", "sensor", mode="before")
    @classmethod
    def _text(cls, value: object) -> object:
        return str(value) if isinstance(value, int) else value


class NgsiTypeMapping(_Strict):
    """One Smart Data Models entity type: attributes -> canonical fields, time, sensor."""

    domain: str
    attributes: dict[str, str]
    time: list[str] = Field(default_factory=lambda: ["dateObservedTo", "dateObserved"])
    sensor: list[str] = Field(default_factory=lambda: ["id"])
    id_pattern: str | None = Field(
        None, description="regex with a (?P<sensor>...) group, applied when no sensor maps"
    )


class NgsiConfig(_Strict):
    types: dict[str, NgsiTypeMapping] = Field(default_factory=dict)
    sensors: dict[str, str] = Field(default_factory=dict)


class IngestConfig(_Strict):
    mqtt: MqttConfig = Field(default_factory=lambda: MqttConfig.model_validate({}))
    datastreams: list[DatastreamMapping] = Field(default_factory=list)
    ngsi_ld: NgsiConfig = Field(default_factory=lambda: NgsiConfig.model_validate({}))
    _by_id: dict[str, DatastreamMapping] = PrivateAttr(default_factory=dict)

    def model_post_init(self, _context: Any) -> None:
        for ds in self.datastreams:
            _check_datastream(ds)
        for name, mapping in self.ngsi_ld.types.items():
            spec = _domain(mapping.domain, f"ngsi_ld.types.{name}")
            for attr, target in mapping.attributes.items():
                _target(spec, target, f"ngsi_ld.types.{name}.attributes.{attr}")
            if mapping.id_pattern and "(?P<sensor>" not in mapping.id_pattern:
                raise ValueError(f"ngsi_ld.types.{name}.id_pattern needs a (?P<sensor>...) group")
        self._by_id = {ds.id: ds for ds in self.datastreams}
        if len(self._by_id) != len(self.datastreams):
            raise ValueError("datastream ids must be unique")

    def datastream(self, ds_id: str) -> DatastreamMapping | None:
        return self._by_id.get(ds_id)


def _domain(name: str, where: str) -> DomainSpec:
    if name not in DOMAINS:
        raise ValueError(f"{where}: unknown domain {name!r} (known: {', '.join(DOMAINS)})")
    return DOMAINS[name]


def _target(spec: DomainSpec, target: str, where: str) -> str:
    if target not in spec.quantities:
        raise ValueError(f"{where}: {target!r} is not a value field of the domain")
    return target


def _check_unit(spec: DomainSpec, target: str, unit: str | None, where: str) -> None:
    if unit is not None and unit not in UNITS[spec.quantities[target]]:
        raise ValueError(f"{where}: unit {unit!r} is not a {spec.quantities[target]} unit")


def _check_datastream(ds: DatastreamMapping) -> None:
    where = f"datastream {ds.id}"
    spec = _domain(ds.domain, where)
    if (ds.result is None) == (ds.field is None):
        raise ValueError(f"{where}: give exactly one of `result` (object) or `field` (scalar)")
    targets = list(ds.result.values()) if ds.result else [ds.field or ""]
    for target in targets:
        _target(spec, target, where)
    for target, unit in ds.units.items():
        _check_unit(spec, _target(spec, target, where), unit, where)
    if ds.field:
        _check_unit(spec, ds.field, ds.unit, where)


def load_config(path: Path) -> IngestConfig:
    """Read and check a mapping file; errors name the file and the offending entry."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        return IngestConfig.model_validate(data)
    except (OSError, tomllib.TOMLDecodeError, ValidationError, ValueError) as exc:
        raise ValueError(f"ingest config {path}: {exc}") from exc


# --- bookkeeping shared by both connectors ----------------------------------------------


@dataclass
class SourceCounters:
    """Accepted and rejected (by reason) per source, for /stats and the logs."""

    accepted: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": sum(self.rejected.values()),
            "rejected_by_reason": dict(self.rejected),
        }


class RecentKeys:
    """A bounded set of recently seen keys (oldest forgotten first)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._keys: OrderedDict[Any, None] = OrderedDict()

    def seen(self, key: Any) -> bool:
        """True if ``key`` was seen before; remembers it either way."""
        if key in self._keys:
            self._keys.move_to_end(key)
            return True
        self._keys[key] = None
        if len(self._keys) > self.capacity:
            self._keys.popitem(last=False)
        return False


_IRI_TAIL = re.compile(r"[^/#:]+$")


def short_name(name: str) -> str:
    """``https://smartdatamodels.org/dataModel.Transportation/TrafficFlowObserved`` -> the
    compact term, so expanded and compacted NGSI-LD names map alike."""
    match = _IRI_TAIL.search(name)
    return match.group(0) if match and ("/" in name or "#" in name) else name
