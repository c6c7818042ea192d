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

import codecs
import json
import math
import re
import tomllib
from collections import Counter, OrderedDict
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from itertools import accumulate
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
from core.privacy.edge import Edge
from core.privacy.minimise import minimal_payload
from core.settings import Settings

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
TOO_COMPLEX = "too_complex"
TOO_LARGE = "too_large"


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


def convert(value: object, kind: str, unit: object, what: str) -> object:
    """``value`` in ``unit`` to the canonical unit of ``kind`` (counts stay whole numbers)."""
    if unit is not None and (not isinstance(unit, str) or unit not in UNITS[kind]):
        raise IngestError(WRONG_UNIT, f"{what}: unit {short_repr(unit)} is not a {kind} unit")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value  # the model reports the wrong type
    if isinstance(value, float) and not math.isfinite(value):
        return value  # the model reports NaN/inf
    try:
        return _scaled(value, kind, unit if isinstance(unit, str) else None)
    except OverflowError:  # an integer beyond floats, or a product that overflows
        raise IngestError(INVALID_EVENT, f"{what}: {short_repr(value)} is out of range") from None


def short_repr(value: object, chars: int = 80) -> str:
    """``repr`` of a value for a detail, cut to ``chars``."""
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**chars else "a huge number"
    return _cut(text, chars)


def _cut(text: str, chars: int = 80) -> str:
    return text if len(text) <= chars else f"{text[: chars - 3]}..."


def _scaled(value: float, kind: str, unit: str | None) -> object:
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


def _errors(exc: ValidationError, shown: int = 10) -> str:
    """The model's complaints, the first ``shown`` of them (an event may have thousands)."""
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    text = "; ".join(
        f"{_cut('.'.join(str(p) for p in e['loc']) or 'event')}: {e['msg']}" for e in errors[:shown]
    )
    return text if len(errors) <= shown else f"{text}; and {len(errors) - shown} more"


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
        detail = f"domain {short_repr(domain)} is not one of: {known}"
        return Rejected(UNKNOWN_DOMAIN, detail, origin, raw)
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


# --- bounded JSON: what one body may cost, checked before json.loads --------------------


@dataclass(frozen=True, slots=True)
class JsonLimits:
    """What one body (an HTTP request, an MQTT payload) may hold besides its bytes.

    ``max_depth``: arrays and objects nested in each other (``[{}]`` is 2).
    ``max_items``: events in one body (array elements, NDJSON lines, NGSI-LD entities).
    ``max_string_chars``: characters of any one JSON string, object keys included.
    """

    max_depth: int = 32
    max_items: int = 10_000
    max_string_chars: int = 4096

    @classmethod
    def from_settings(cls, settings: Settings) -> JsonLimits:
        return cls(
            max_depth=settings.ingest_max_depth,
            max_items=settings.ingest_max_items,
            max_string_chars=settings.ingest_max_string_chars,
        )

    def check_items(self, count: int, what: str = "events") -> None:
        if count > self.max_items:
            raise IngestError(TOO_COMPLEX, f"{count} {what} in one body, over {self.max_items}")


DEFAULT_LIMITS = JsonLimits()
# Dead letters carry the raw input, but a Kafka message has a size limit (librdkafka's
# message.max.bytes is 1,000,000 by default): longer payloads keep their first bytes.
MAX_DEAD_LETTER_PAYLOAD = 512 * 1024

_QUOTE, _BACKSLASH = b'"', b"\\"
_ESCAPE = re.compile(rb"\\.", re.DOTALL)  # a backslash and the character it escapes
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'"[]{}')  # deleted by the scan
_PAIRS = bytes.maketrans(b"[{]}", b"(())")  # the kind of bracket does not change depth
_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # as signed bytes: +1, -1


def _too_deep(tokens: bytes, limit: int) -> bool:
    """Whether a body reduced to its quotes and brackets nests deeper than ``limit``.

    Brackets inside strings do not count. Matched pairs are removed innermost first, a
    level per pass (bytes.replace), so a well-formed body costs as many passes as it is
    deep; a broken body (unmatched brackets) is counted bracket by bracket, stopping at
    the first level over ``limit``.
    """
    outside = tokens.replace(b'""', b"")  # strings without brackets in them
    if _QUOTE in outside:  # some string holds brackets: keep only what lies outside strings
        outside = b"".join(tokens.split(_QUOTE)[::2])
    pairs = outside.translate(_PAIRS)
    if b"(" * (limit + 1) in pairs:
        return True
    for _ in range(limit):
        shorter = pairs.replace(b"()", b"")
        if len(shorter) == len(pairs):
            break
        pairs = shorter
    if not pairs:
        return False
    if b"()" in pairs:  # a pair still holding more than ``limit`` levels
        return True
    steps = memoryview(outside.translate(_STEPS)).cast("b")
    return any(depth > limit for depth in accumulate(steps))


def _long_string(raw: bytes, data: bytes, limit: int) -> int:
    """Characters of the first string longer than ``limit`` (0: none), before parsing.

    ``data`` is ``raw`` with escaped quotes neutralized, so its quotes delimit strings. A
    string of more than ``limit`` characters has more than ``limit`` bytes between its
    quotes: the scan hops from the last quote of each window of ``limit`` + 1 bytes (two
    hops advance at least a window) and decodes only a string it cannot hop over.
    """
    start, end = 0, len(data)
    counted = quotes = 0  # quotes in data[:counted]
    while end - start > limit:
        last = data.rfind(_QUOTE, start, start + limit + 1)
        if last >= 0:
            start = last + 1
            continue
        quotes += data.count(_QUOTE, counted, start)
        counted = start
        closing = data.find(_QUOTE, start)
        if closing < 0:
            return 0  # an unterminated string or a long tail: the parser judges it
        if quotes % 2:  # inside a string: measure it
            opening = data.rfind(_QUOTE, 0, start)
            try:
                chars = len(json.loads(raw[opening : closing + 1].decode()))
            except ValueError:
                return 0  # a bad escape: not JSON, the parser says so
            if chars > limit:
                return chars
        start = closing + 1
    return 0


def loads(raw: bytes | str, limits: JsonLimits = DEFAULT_LIMITS) -> Any:
    """JSON within ``limits``; NaN/Infinity read as floats so the model can reject them per item.

    Anything that cannot be parsed is an IngestError (``invalid_json``; over a limit:
    ``too_complex``), never another exception. The text must be UTF-8 (RFC 8259; a BOM is
    skipped). Nesting and string lengths are measured on the bytes before parsing, in a
    few C-speed passes (translate, replace, rfind): a hostile body costs about what its
    bytes cost, and never a recursion.
    """
    if isinstance(raw, str):
        try:
            raw = raw.encode()
        except UnicodeEncodeError as exc:
            raise IngestError(INVALID_JSON, f"not JSON: {exc}") from None
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
    try:
        text = raw.decode()
    except UnicodeDecodeError as exc:
        detail = f"not JSON: not UTF-8 ({exc.reason} at byte {exc.start})"
        raise IngestError(INVALID_JSON, detail) from None
    # An escaped quote does not end a string: every escape neutralized (same length).
    data = _ESCAPE.sub(b"__", raw) if _BACKSLASH in raw else raw
    tokens = data.translate(None, _NOT_STRUCTURE)
    opens = tokens.count(b"[") + tokens.count(b"{")  # fewer than the limit: cannot be deeper
    if opens > limits.max_depth and _too_deep(tokens, limits.max_depth):
        raise IngestError(TOO_COMPLEX, f"arrays/objects nested over {limits.max_depth} levels")
    chars = _long_string(raw, data, limits.max_string_chars)
    if chars:
        raise IngestError(
            TOO_COMPLEX, f"a string of {chars} characters, over {limits.max_string_chars}"
        )
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise IngestError(INVALID_JSON, f"not JSON: {exc}") from None


def fit_dead_letter(rejected: Rejected, limit: int = MAX_DEAD_LETTER_PAYLOAD) -> Rejected:
    """``rejected`` as a dead letter can carry it: its raw input cut to ``limit`` bytes (the
    detail says so), its detail to 4,096 characters, and texts that UTF-8 cannot encode
    (lone surrogates) escaped."""
    raw = rejected.raw
    if isinstance(raw, str):
        raw = raw.encode(errors="backslashreplace")
    detail, origin = _encodable(rejected.detail[:4096]), _encodable(rejected.origin[:1024])
    if len(raw) > limit:
        detail = f"{detail} (payload: the first {limit} of {len(raw)} bytes)"
        raw = raw[:limit]
    if (raw, detail, origin) == (rejected.raw, rejected.detail, rejected.origin):
        return rejected
    return replace(rejected, detail=detail, origin=origin, raw=raw)


def dead_letter_fields() -> frozenset[str]:
    """The fields whose values a dead letter keeps (#16): the canonical models' fields and
    the time, unit and type keys of SensorThings and NGSI-LD, which explain a rejection and
    identify no one. Any other field (an NGSI-LD ``address`` or ``name``, free text, an
    extra attribute) keeps its name only."""
    canonical = {name for spec in DOMAINS.values() for name in spec.model.model_fields}
    protocol = {"result", "phenomenonTime", "resultTime", "observedAt", "unitCode", "type"}
    return frozenset(canonical | protocol | {"unitOfMeasurement"})


def minimised(rejected: Rejected, identifiers: Identifiers | None = None) -> Rejected:
    """``rejected`` as the ingest dead-letters it: its payload reduced by
    :func:`core.privacy.minimise.minimal_payload` to its JSON shape and the values of
    :func:`dead_letter_fields` (a payload that is not JSON: its size and SHA-256), and the
    values of declared ``identifiers`` to their pseudonyms."""
    if identifiers is None or not identifiers.fields:
        return replace(rejected, raw=minimal_payload(rejected.raw, _DEAD_LETTER_FIELDS))
    raw = minimal_payload(
        rejected.raw, _DEAD_LETTER_FIELDS, identifiers=identifiers.fields,
        pseudonymise=identifiers.pseudonym,
    )  # fmt: skip
    return replace(rejected, raw=raw)


def _encodable(text: str) -> str:
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode(errors="backslashreplace").decode()
    return text


def validate_items(
    items: list[tuple[Any, bytes | None]],
    origin: str,
    now_ms: int,
    max_future_ms: int,
    identifiers: Identifiers | None = None,
) -> list[Accepted | Rejected | OptedOut]:
    """Every item of a body (from :func:`split_items`) through :func:`validate_event`,
    its declared ``identifiers`` pseudonymised first (an opted-out one: :class:`OptedOut`).

    An item without bytes of its own (an array element) is written out for its dead
    letter only if it is rejected.
    """
    out: list[Accepted | Rejected | OptedOut] = []
    for i, (item, raw) in enumerate(items):
        where = f"{origin}#{i}"
        if isinstance(item, IngestError):
            out.append(Rejected(item.reason, str(item), where, raw or b""))
            continue
        event, opted_out = identifiers.protect(item) if identifiers else (item, False)
        outcome = validate_event(event, where, raw or b"", now_ms, max_future_ms)
        if raw is None and isinstance(outcome, Rejected):
            outcome = replace(outcome, raw=dumps(item))  # minimised when dead-lettered
        out.append(OptedOut(outcome) if opted_out else outcome)
    return out


def split_items(
    raw: bytes, ndjson: bool | None = None, limits: JsonLimits = DEFAULT_LIMITS
) -> list[tuple[Any, bytes | None]]:
    """A body of events as (parsed item or IngestError, the item's own bytes if it has any).

    ``ndjson`` None guesses: a body starting with ``[`` is a JSON array, one line is one
    object, several lines are NDJSON. A bad NDJSON line spoils only itself; a body that is
    not NDJSON and does not parse, or one over ``limits.max_items``, spoils the whole body
    (IngestError is raised).
    """
    text = raw.strip()
    if ndjson is None:
        ndjson = not text.startswith(b"[") and b"\n" in text
    if ndjson:
        lines = [line for line in (ln.strip() for ln in text.split(b"\n")) if line]
        limits.check_items(len(lines), "lines")
        return [(_item(line, limits), line) for line in lines]
    body = loads(text, limits)
    if not text.startswith(b"["):
        return [(body, text)]
    if not isinstance(body, list):
        raise IngestError(INVALID_JSON, "expected a JSON array of events")
    limits.check_items(len(body))
    return [(item, None) for item in body]


def _item(line: bytes, limits: JsonLimits) -> Any:
    try:
        return loads(line, limits)
    except IngestError as exc:
        return exc


def dumps(value: object) -> bytes:
    """An item's JSON for its dead letter (NaN kept as written; lone surrogates escaped)."""
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return json.dumps(value, separators=(",", ":")).encode()


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


class PrivacyConfig(_Strict):
    """``[privacy]``: the incoming fields that single out a person or a person's device.

    A declared field's value is pseudonymised (keyed HMAC-SHA256, ``core.privacy``) before
    anything is published or dead-lettered, and an observation whose value opted out is
    dropped. A canonical sensor field (``segment_id``, ``sensor_id``, ``car_park_id``)
    keeps its pseudonym in the event; any other declared field (``reporter``, ``plate``,
    in a canonical event, an NGSI-LD attribute or SensorThings ``parameters``) serves the
    opt-out only and is not published.
    """

    identifiers: list[Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]] = (
        Field(default_factory=list, description="fields that identify a person or their device")
    )

    @field_validator("identifiers")
    @classmethod
    def _unique(cls, names: list[str]) -> list[str]:
        if len(set(names)) != len(names):
            raise ValueError(f"privacy.identifiers repeat a name: {names}")
        reserved = {"domain", "event_time"} & set(names)
        if reserved:
            raise ValueError(f"privacy.identifiers: {sorted(reserved)} identify no one")
        return names


class IngestConfig(_Strict):
    mqtt: MqttConfig = Field(default_factory=lambda: MqttConfig.model_validate({}))
    privacy: PrivacyConfig = Field(default_factory=lambda: PrivacyConfig.model_validate({}))
    datastreams: list[DatastreamMapping] = Field(default_factory=list)
    ngsi_ld: NgsiConfig = Field(default_factory=lambda: NgsiConfig.model_validate({}))
    onem2m: dict[str, Any] = Field(
        default_factory=dict, description="oneM2M containers, checked by sources/onem2m.py"
    )
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


# --- declared identifiers: pseudonyms and opt-outs (#16) --------------------------------


@dataclass(frozen=True, slots=True)
class OptedOut:
    """An item whose declared identifier opted out: published nowhere, dead-lettered
    nowhere, counted as ``opted_out``. ``answer`` is what it would have been (the HTTP
    answer says that, so the sender learns nothing about the opt-out)."""

    answer: Accepted | Rejected


class Identifiers:
    """A mapping's declared identifier fields, applied with the source's :class:`Edge`.

    Pure once built: the edge (keys, the followed opt-out registry) is made by the
    source's ``setup``. Without declared fields nothing is done and no edge is needed.
    """

    def __init__(self, fields: Collection[str], edge: Edge | None = None) -> None:
        self.fields = frozenset(fields)
        self.edge = edge

    def _tools(self) -> Edge:
        if self.edge is None:
            raise RuntimeError("declared identifiers need the source's privacy edge (setup)")
        return self.edge

    def pseudonym(self, field_name: str, value: object) -> str | None:
        """The pseudonym of a text or number ``value`` of ``field_name`` (None: neither)."""
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            return None
        text = str(value).strip()
        return self._tools().pseudonym(field_name, text) if text else None

    def identity(self, values: Mapping[str, object]) -> dict[str, str]:
        """The declared identifiers among ``values`` whose value is a non-empty text or a
        whole number (as text: ``12`` and ``"12"`` are one identifier)."""
        out = {}
        for name in self.fields.intersection(values):
            value = values[name]
            if isinstance(value, str | int) and not isinstance(value, bool):
                text = str(value).strip()
                if text:
                    out[name] = text
        return out

    def opted_out(self, identity: Mapping[str, str]) -> bool:
        """Whether any of ``identity`` (from :meth:`identity`) has opted out."""
        edge = self.edge if identity else None
        if identity and edge is None:
            edge = self._tools()
        return any(edge.opted_out(k, v) for k, v in identity.items()) if edge else False

    def protect(self, event: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """``event`` with its declared identifiers pseudonymised (a field its domain's model
        does not have is removed: it served the opt-out), and whether one opted out.

        A model field whose value is not a text, or another declared field whose value
        is neither a text nor a whole number, stays as it is, for the model to reject
        (its dead letter carries the pseudonym, or ``<dropped>``).
        """
        if not isinstance(event, dict) or not self.fields.intersection(event):
            return event, False  # not an object: validate_event rejects it as it is
        identity = self.identity(event)
        spec = DOMAINS.get(event["domain"]) if isinstance(event.get("domain"), str) else None
        model_fields = spec.model.model_fields if spec is not None else {}
        out = dict(event)
        for name, text in identity.items():
            if name not in model_fields:
                del out[name]
            elif isinstance(out[name], str):
                out[name] = self._tools().pseudonym(name, text)
        return out, self.opted_out(identity)


# --- bookkeeping shared by both connectors ----------------------------------------------


@dataclass
class SourceCounters:
    """Accepted, rejected (by reason) and opted out per source, for /stats and the logs."""

    accepted: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    opted_out: int = 0  # observations of opted-out identifiers: dropped, kept nowhere (#16)

    def as_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "opted_out": self.opted_out,
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


_DEAD_LETTER_FIELDS = dead_letter_fields()
