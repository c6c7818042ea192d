"""What the MQTT and HTTP ingest connectors share: canonical event models, the mapping file,
unit conversion and the one validation path every incoming event goes through.

Every source turns its payload into a *canonical event dict* (``domain`` + the fields of
that domain's model), and :func:`validate_event` turns that into an :class:`Accepted`
(a traffic :class:`Reading`, or the Avro record of another domain's :class:`EventStream`)
or a :class:`Rejected` with a stable reason code. A domain is one pydantic model plus one
:class:`DomainSpec` (traffic, air, parking); a new domain is a new model, a spec row here
and rows in the mapping file (no connector code changes).
"""

from __future__ import annotations

import json
import math
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
    model_validator,
)

from connectors.publishing import AIR, PARKING, EventPublisher, EventStream, Reading, Rejected

# --- dead-letter reasons (docs/ingest.md) ------------------------------------------------

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


Index = Annotated[float, Strict(), Field(ge=0, le=500)]


class AirEvent(BaseModel):
    """An air-quality reading: five pollutant sub-indices on the 0..500 AQI scale."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, title="AirEvent")

    domain: Literal["air"]
    sensor_id: SensorId = Field(description="Sensor id (in Aarhus: the road segment id)")
    event_time: datetime = Field(description="When the reading was taken, ISO 8601 with offset")
    ozone: Index
    particulate_matter: Index
    carbon_monoxide: Index
    sulfure_dioxide: Index = Field(description="Sulphur dioxide index (name as in the source)")
    nitrogen_dioxide: Index
    latitude: Annotated[float, Strict(), Field(ge=-90, le=90)] | None = None
    longitude: Annotated[float, Strict(), Field(ge=-180, le=180)] | None = None

    @field_validator("event_time", mode="before")
    @classmethod
    def _time(cls, value: object) -> datetime:
        return parse_time(value)


class ParkingEvent(BaseModel):
    """A car park's occupancy; ``available_spaces`` may stand in for ``vehicle_count``."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, title="ParkingEvent")

    domain: Literal["parking"]
    car_park_id: SensorId = Field(description="Car park id (Aarhus garagecode)")
    event_time: datetime = Field(description="When the count was taken, ISO 8601 with offset")
    vehicle_count: Count | None = Field(None, description="Vehicles parked")
    total_spaces: Annotated[int, Strict(), Field(gt=0, le=2**31 - 1)]
    available_spaces: Count | None = Field(
        None, description="Free spaces; vehicle_count = total_spaces - available_spaces"
    )

    @field_validator("event_time", mode="before")
    @classmethod
    def _time(cls, value: object) -> datetime:
        return parse_time(value)

    @model_validator(mode="after")
    def _occupancy(self) -> ParkingEvent:
        if self.vehicle_count is None:
            if self.available_spaces is None:
                raise ValueError("give vehicle_count or available_spaces")
            self.vehicle_count = self.total_spaces - self.available_spaces
        if not 0 <= self.vehicle_count <= self.total_spaces:
            raise ValueError(f"{self.vehicle_count} vehicles do not fit {self.total_spaces} spaces")
        if (
            self.available_spaces is not None
            and self.vehicle_count + self.available_spaces > self.total_spaces
        ):
            raise ValueError("vehicle_count + available_spaces exceed total_spaces")
        return self


@dataclass(frozen=True)
class DomainSpec:
    """How mappings fill a domain's canonical model: its sensor field and unit kinds.

    ``required`` is what an observation must complete: every group needs one of its
    fields. ``stream`` is the domain's topic pair (None: traffic, published as Reading).
    """

    model: type[BaseModel]
    sensor_field: str
    quantities: dict[str, str]  # canonical field -> unit kind (see UNITS)
    required: tuple[tuple[str, ...], ...]
    stream: EventStream | None = None

    def missing(self, values: dict[str, Any]) -> list[str]:
        """The required groups ``values`` does not fill yet, as text."""
        return [" or ".join(g) for g in self.required if not any(f in values for f in g)]


POLLUTANT_FIELDS = {
    "ozone": "aqi:o3",
    "particulate_matter": "aqi:pm10",
    "carbon_monoxide": "aqi:co",
    "sulfure_dioxide": "aqi:so2",
    "nitrogen_dioxide": "aqi:no2",
}

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
        required=(("vehicle_count",), ("avg_speed_kmh",)),
    ),
    "air": DomainSpec(
        AirEvent,
        sensor_field="sensor_id",
        quantities={**POLLUTANT_FIELDS, "latitude": "degrees", "longitude": "degrees"},
        required=tuple((f,) for f in POLLUTANT_FIELDS),
        stream=AIR,
    ),
    "parking": DomainSpec(
        ParkingEvent,
        sensor_field="car_park_id",
        quantities={
            "vehicle_count": "count",
            "total_spaces": "count",
            "available_spaces": "count",
        },
        required=(("vehicle_count", "available_spaces"), ("total_spaces",)),
        stream=PARKING,
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
    "degrees": {"deg": 1.0, "DD": 1.0},
}

# --- air: concentrations -> US EPA AQI sub-indices --------------------------------------
# Breakpoints of the US EPA AQI (Technical Assistance Document, 2024): (C_lo, C_hi, I_lo,
# I_hi) in the table's unit, and the decimals a concentration is truncated to first.
# O3 uses the 8-hour table, which ends at 0.200 ppm (AQI 300): higher values need 1-hour
# averages and are refused, as is anything beyond AQI 500.
AQI_TABLES: dict[str, tuple[str, int, tuple[tuple[float, float, int, int], ...]]] = {
    "aqi:o3": (
        "ppm",
        3,
        (
            (0.0, 0.054, 0, 50),
            (0.055, 0.070, 51, 100),
            (0.071, 0.085, 101, 150),
            (0.086, 0.105, 151, 200),
            (0.106, 0.200, 201, 300),
        ),
    ),
    "aqi:pm10": (
        "ug/m3",
        0,
        (
            (0, 54, 0, 50),
            (55, 154, 51, 100),
            (155, 254, 101, 150),
            (255, 354, 151, 200),
            (355, 424, 201, 300),
            (425, 504, 301, 400),
            (505, 604, 401, 500),
        ),
    ),
    "aqi:co": (
        "ppm",
        1,
        (
            (0.0, 4.4, 0, 50),
            (4.5, 9.4, 51, 100),
            (9.5, 12.4, 101, 150),
            (12.5, 15.4, 151, 200),
            (15.5, 30.4, 201, 300),
            (30.5, 40.4, 301, 400),
            (40.5, 50.4, 401, 500),
        ),
    ),
    "aqi:so2": (
        "ppb",
        0,
        (
            (0, 35, 0, 50),
            (36, 75, 51, 100),
            (76, 185, 101, 150),
            (186, 304, 151, 200),
            (305, 604, 201, 300),
            (605, 804, 301, 400),
            (805, 1004, 401, 500),
        ),
    ),
    "aqi:no2": (
        "ppb",
        0,
        (
            (0, 53, 0, 50),
            (54, 100, 51, 100),
            (101, 360, 101, 150),
            (361, 649, 151, 200),
            (650, 1249, 201, 300),
            (1250, 1649, 301, 400),
            (1650, 2049, 401, 500),
        ),
    ),
}
# g/mol, for mass concentration -> mixing ratio at 25 degC and 1 atm (24.45 L/mol)
MOLAR_MASS = {"aqi:o3": 48.00, "aqi:co": 28.01, "aqi:so2": 64.07, "aqi:no2": 46.01}
MOLAR_VOLUME = 24.45
# unit (symbol or UN/CEFACT code) -> (dimension, factor to ug/m3 or to ppb)
CONCENTRATION_UNITS: dict[str, tuple[str, float]] = {
    "AQI": ("index", 1.0),
    "ug/m3": ("mass", 1.0),
    "µg/m3": ("mass", 1.0),
    "GQ": ("mass", 1.0),
    "mg/m3": ("mass", 1000.0),
    "GP": ("mass", 1000.0),
    "ppb": ("ratio", 1.0),
    "61": ("ratio", 1.0),
    "ppm": ("ratio", 1000.0),
    "59": ("ratio", 1000.0),
}
for _kind in AQI_TABLES:
    UNITS[_kind] = {
        unit: factor
        for unit, (dimension, factor) in CONCENTRATION_UNITS.items()
        if dimension != "ratio" or _kind in MOLAR_MASS  # PM10 has no mixing ratio
    }


def aqi_index(kind: str, value: float, unit: str) -> float:
    """A concentration in ``unit`` as its EPA AQI sub-index (``AQI``: already an index)."""
    dimension, factor = CONCENTRATION_UNITS[unit]
    if dimension == "index":
        return float(value)
    if value < 0:
        raise IngestError(INVALID_EVENT, f"negative concentration {value} {unit}")
    table_unit, decimals, table = AQI_TABLES[kind]
    amount = value * factor  # ug/m3 or ppb
    if dimension == "mass" and table_unit != "ug/m3":
        amount = amount * MOLAR_VOLUME / MOLAR_MASS[kind]  # -> ppb
    if table_unit == "ppm":
        amount /= 1000.0
    scale = 10**decimals
    truncated = math.floor(amount * scale + 1e-9) / scale
    for c_lo, c_hi, i_lo, i_hi in table:
        if truncated <= c_hi:
            return float(
                math.floor((i_hi - i_lo) / (c_hi - c_lo) * (truncated - c_lo) + i_lo + 0.5)
            )
    raise IngestError(
        INVALID_EVENT, f"{value} {unit} is beyond the AQI table of {kind[4:].upper()}"
    )


def convert(value: object, kind: str, unit: str | None, what: str) -> object:
    """``value`` in ``unit`` to the canonical unit of ``kind`` (counts stay whole numbers)."""
    if unit is not None and unit not in UNITS[kind]:
        raise IngestError(WRONG_UNIT, f"{what}: unit {unit!r} is not a {kind} unit")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value  # the model reports the wrong type
    if isinstance(value, float) and not math.isfinite(value):
        return value  # the model reports NaN/inf
    if kind in AQI_TABLES:
        return aqi_index(kind, value, unit or "AQI")
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
class DomainRecord:
    """A non-traffic canonical event, as :meth:`EventPublisher.event` takes it."""

    stream: EventStream
    record: dict[str, Any]
    origin: str


@dataclass(frozen=True, slots=True)
class Accepted:
    reading: Reading | DomainRecord
    event_id: str


def publish_accepted(events: EventPublisher, accepted: Accepted) -> None:
    """An accepted event onto its domain's topics; ``source`` is the publishing component."""
    item = accepted.reading
    if isinstance(item, Reading):
        events.reading(item)
    else:
        record = {**item.record, "source": events.component}
        events.event(item.stream.topic, record, item.origin)


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
    event_time: datetime = model.event_time  # type: ignore[attr-defined]  # every model has it
    event_ms = int(event_time.timestamp() * 1000)
    if event_ms > now_ms + max_future_ms:
        ahead = (event_ms - now_ms) / 1000
        return Rejected(FUTURE_TIMESTAMP, f"event_time is {ahead:.0f}s in the future", origin, raw)
    sensor = str(getattr(model, spec.sensor_field))
    if spec.stream is not None:
        record = model.model_dump(exclude={"domain", "event_time", "available_spaces"})
        record.update(event_time=event_ms, event_time_ms=event_ms)
        return Accepted(
            DomainRecord(spec.stream, record, origin), event_id(str(domain), sensor, event_ms)
        )
    assert isinstance(model, TrafficEvent)
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
    """One SensorThings Datastream or MultiDatastream: sensor, domain, what its result fills.

    Exactly one of ``result`` (the result is an object: member name -> canonical field),
    ``field`` (the result is a scalar for that one canonical field) or ``components``
    (a MultiDatastream: the result is an array, one canonical field per position, ""
    for a position to ignore). ``units`` / ``unit`` say what the unitOfMeasurement is,
    per canonical field.
    """

    id: str
    domain: str
    sensor: str
    result: dict[str, str] | None = None
    field: str | None = None
    components: list[str] | None = None
    units: dict[str, str] = Field(default_factory=dict)
    unit: str | None = None

    @property
    def multi(self) -> bool:
        return self.components is not None

    @field_validator("id", "sensor", mode="before")
    @classmethod
    def _text(cls, value: object) -> object:
        return str(value) if isinstance(value, int) else value


class NgsiTypeMapping(_Strict):
    """One Smart Data Models entity type: attributes -> canonical fields, time, sensor.

    ``units``: the unit of an attribute that comes without ``unitCode`` (key-values).
    ``categories``: a text attribute's values as numbers (ParkingSpot ``status``).
    ``constants``: canonical fields every entity of the type has (a spot has 1 space).
    """

    domain: str
    attributes: dict[str, str]
    units: dict[str, str] = Field(default_factory=dict)
    categories: dict[str, dict[str, int]] = Field(default_factory=dict)
    constants: dict[str, int | float] = Field(default_factory=dict)
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
    _by_id: dict[tuple[bool, str], DatastreamMapping] = PrivateAttr(default_factory=dict)

    def model_post_init(self, _context: Any) -> None:
        for ds in self.datastreams:
            _check_datastream(ds)
        for name, mapping in self.ngsi_ld.types.items():
            spec = _domain(mapping.domain, f"ngsi_ld.types.{name}")
            for attr, target in mapping.attributes.items():
                where = f"ngsi_ld.types.{name}.attributes.{attr}"
                _check_unit(spec, _target(spec, target, where), mapping.units.get(attr), where)
            for target in mapping.constants:
                _target(spec, target, f"ngsi_ld.types.{name}.constants")
            if mapping.id_pattern and "(?P<sensor>" not in mapping.id_pattern:
                raise ValueError(f"ngsi_ld.types.{name}.id_pattern needs a (?P<sensor>...) group")
        self._by_id = {(ds.multi, ds.id): ds for ds in self.datastreams}
        if len(self._by_id) != len(self.datastreams):
            raise ValueError("datastream ids must be unique (per Datastream / MultiDatastream)")

    def datastream(self, ds_id: str, multi: bool = False) -> DatastreamMapping | None:
        return self._by_id.get((multi, ds_id))


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
    shapes = [ds.result is not None, ds.field is not None, ds.components is not None]
    if sum(shapes) != 1:
        raise ValueError(
            f"{where}: give exactly one of `result` (object), `field` (scalar) "
            "or `components` (MultiDatastream array)"
        )
    if ds.result is not None:
        targets = list(ds.result.values())
    elif ds.components is not None:
        targets = [c for c in ds.components if c]
    else:
        targets = [ds.field or ""]
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
