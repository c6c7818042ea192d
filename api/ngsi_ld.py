"""NGSI-LD (ETSI GS CIM 009) over the KPIs: every KPI series is a KeyPerformanceIndicator.

Context brokers, digital-twin platforms and FIWARE tooling speak NGSI-LD, so the KPIs
are offered the way they expect them: each series (kpi, scope, entity) is an entity of the
Smart Data Models ``KeyPerformanceIndicator`` type, with the id
``urn:ngsi-ld:KeyPerformanceIndicator:<city>:<kpi>:<scope>:<entity>`` (each part
percent-encoded, so a district's name with a space or a colon stays one part).

- ``GET /ngsi-ld/v1/entities?type=KeyPerformanceIndicator``: the series with their latest
  window (``kpiValue``, ``calculationPeriod``), paged by ``limit``/``offset``;
- ``GET /ngsi-ld/v1/entities/{id}``: one of them;
- ``GET /ngsi-ld/v1/temporal/entities/{id}``: its windows (``timerel``/``timeAt``/
  ``endTimeAt``, ``lastN``), normalized or ``temporalValues``, or aggregated per
  ``aggrPeriodDuration`` with ``aggrMethods`` (``aggregatedValues``), computed by
  ClickHouse;
- ``GET /ngsi-ld/contexts/{file}``: the JSON-LD contexts, served from ``api/contexts``
  (never fetched); responses reference them by this server's own URL.

A window's instant (``observedAt``) is its start, as in the series API and the daily
rollup. Errors are NGSI-LD ProblemDetails (``https://uri.etsi.org/ngsi-ld/errors/...``).
Every SQL is a constant text with ClickHouse bound parameters; user input only ever
reaches it as a parameter value.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, unquote, urlencode

import shapely.geometry
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from api.context import (
    ApiContext,
    Caller,
    City,
    Role,
    current_caller,
    get_context,
    record_access,
)
from api.problems import Problem
from connectors.sinks.clickhouse.endpoint import QueryError, QueryResult
from core.city import UNKNOWN, load_pack, read_reference
from core.kpis import Kpi
from families.registry import KPIS

CONTEXTS_DIR = Path(__file__).resolve().parent / "contexts"
CORE_CONTEXT = "ngsi-ld-core-context-v1.8.jsonld"
KPI_CONTEXT = "sdm-kpi-context.jsonld"
CONTEXT_FILES = (CORE_CONTEXT, KPI_CONTEXT)
CONTEXTS_PATH = "/ngsi-ld/contexts"

KPI_TYPE = "KeyPerformanceIndicator"
KPI_TYPE_IRI = (
    "https://smartdatamodels.org/dataModel.KeyPerformanceIndicator/KeyPerformanceIndicator"
)
URN_PREFIX = f"urn:ngsi-ld:{KPI_TYPE}:"
TEMPORAL_ATTRIBUTE = "kpiValue"  # the one attribute with a history

LD_JSON = "application/ld+json"
JSON = "application/json"
GEO_JSON = "application/geo+json"
CONTEXT_REL = "http://www.w3.org/ns/json-ld#context"

DEFAULT_LIMIT = 20
MAX_LIMIT = 1000  # entities per page, and instances per temporal response
MAX_PERIODS = 1000  # aggregation periods per response
MAX_AGGREGATED_SPAN = timedelta(days=366)

ERRORS = "https://uri.etsi.org/ngsi-ld/errors/"

# aggrMethods -> the ClickHouse expression computing it over the period's window values.
# All exact on the stored Float64 values; stddev is the population standard deviation.
AGGREGATES: dict[str, str] = {
    "totalCount": "count()",
    "distinctCount": "uniqExact(value)",
    "sum": "sum(value)",
    "avg": "avg(value)",
    "min": "min(value)",
    "max": "max(value)",
    "stddev": "stddevPop(value)",
    "sumsq": "sum(value * value)",
}

# What a KPI of each domain aggregates, in Smart Data Models terms (aggregatedData).
AGGREGATED_DATA: dict[str, tuple[str, tuple[str, ...]]] = {
    "traffic": ("TrafficFlowObserved", ("intensity", "averageVehicleSpeed")),
    "air": ("AirQualityObserved", ("o3", "pm10", "co", "so2", "no2")),
    "parking": ("OffStreetParking", ("availableSpotNumber", "totalSpotNumber")),
    "devices": ("Device", ("dateLastValueReported",)),
    "energy": ("EnergyMeter", ("totalActiveEnergyImport",)),
    "waste": ("WasteContainer", ("fillingLevel",)),
    "service": ("ServiceRequest", ("status",)),
}


# --- errors -------------------------------------------------------------------------


class NgsiError(Exception):
    """An NGSI-LD ProblemDetails error: ``kind`` is the ETSI error type's name."""

    def __init__(self, status: int, kind: str, detail: str, parameter: str | None = None):
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.detail = detail
        self.parameter = parameter

    def body(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": ERRORS + self.kind,
            "title": _TITLES.get(self.kind, self.kind),
            "status": self.status,
            "detail": self.detail,
        }
        if self.parameter is not None:
            body["parameter"] = self.parameter
        if instance is not None:
            body["instance"] = instance
        return body


_TITLES = {
    "BadRequestData": "Bad request data",
    "InvalidRequest": "Invalid request",
    "ResourceNotFound": "Resource not found",
    "TooManyResults": "Too many results",
    "NotAcceptable": "Not acceptable",
    "InternalError": "Internal error",
}


def bad_data(parameter: str, detail: str) -> NgsiError:
    return NgsiError(400, "BadRequestData", f"{parameter}: {detail}", parameter)


def not_found(detail: str, parameter: str | None = None) -> NgsiError:
    return NgsiError(404, "ResourceNotFound", detail, parameter)


def too_many(parameter: str, detail: str) -> NgsiError:
    return NgsiError(403, "TooManyResults", f"{parameter}: {detail}", parameter)


# --- entity ids ---------------------------------------------------------------------


@dataclass(frozen=True)
class SeriesId:
    """One KPI series: the entity an NGSI-LD id names."""

    city: str
    kpi: str
    scope: str
    entity: str

    @property
    def urn(self) -> str:
        parts = (self.city, self.kpi, self.scope, self.entity)
        return URN_PREFIX + ":".join(quote(p, safe="") for p in parts)


def parse_id(text: str, parameter: str = "id") -> SeriesId:
    """The series an entity id names; 400 BadRequestData when it is not one of ours."""
    if not text.startswith(URN_PREFIX):
        raise bad_data(parameter, f"{text!r} is not a {URN_PREFIX}<city>:<kpi>:<scope>:<entity> id")
    parts = text[len(URN_PREFIX) :].split(":")
    if len(parts) != 4 or not all(parts):
        raise bad_data(parameter, f"{text!r} must have four parts: <city>:<kpi>:<scope>:<entity>")
    city, kpi, scope, entity = (unquote(p) for p in parts)
    return SeriesId(city, kpi, scope, entity)


# --- parameters ---------------------------------------------------------------------

_DURATION = re.compile(
    r"^P(?!$)(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?=\d)(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$"
)
_CALENDAR = re.compile(r"^P(?:\d+Y)?(?:\d+M)?")


def parse_duration(text: str, parameter: str = "aggrPeriodDuration") -> timedelta:
    """An ISO 8601 duration of fixed length (PnW, PnD, PTnHnMnS and mixes; PT0S allowed).

    Years and months have no fixed length, so they are refused rather than guessed."""
    match = _DURATION.match(text)
    if match is None:
        if _CALENDAR.match(text) and re.match(r"^P\d+[YM]", text):
            raise bad_data(parameter, f"{text!r}: years and months are not supported; use days")
        raise bad_data(parameter, f"{text!r} is not an ISO 8601 duration such as PT15M or P1D")
    parts = {k: float(v) for k, v in match.groupdict().items() if v is not None}
    if text.endswith("T"):
        raise bad_data(parameter, f"{text!r} is not an ISO 8601 duration")
    return timedelta(**parts)


def parse_time(text: str, parameter: str) -> datetime:
    """An ISO 8601 date-time with a zone (``Z`` or an offset), as UTC."""
    try:
        value = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise bad_data(parameter, f"{text!r} is not an ISO 8601 date-time") from None
    if value.tzinfo is None:
        raise bad_data(parameter, f"{text!r} has no time zone (add Z or an offset)")
    return value.astimezone(UTC)


def parse_count(text: str | None, parameter: str, default: int, maximum: int) -> int:
    """A non-negative integer parameter; above ``maximum`` is 403 TooManyResults."""
    if text is None:
        return default
    if not text.isdigit():
        raise bad_data(parameter, f"{text!r} is not a non-negative integer")
    value = int(text)
    if value > maximum:
        raise too_many(parameter, f"{value} is above the maximum of {maximum}")
    return value


def options_of(params: Mapping[str, str]) -> set[str]:
    """``options`` and ``format`` together (NGSI-LD 1.8 moved representations to format)."""
    words = {w.strip() for w in params.get("options", "").split(",") if w.strip()}
    if "format" in params:
        words.add(params["format"])
    known = {"normalized", "simplified", "keyValues", "temporalValues", "aggregatedValues",
             "sysAttrs", "count"}  # fmt: skip
    unknown = sorted(words - known)
    if unknown:
        raise bad_data("options", f"unknown option(s) {unknown}; known: {sorted(known)}")
    return words


@dataclass(frozen=True)
class TimeRange:
    """The requested interval [start, end); None is open on that side."""

    start: datetime | None
    end: datetime | None


def time_range(params: Mapping[str, str]) -> TimeRange:
    """``timerel`` with ``timeAt`` (and ``endTimeAt`` for ``between``), as the spec says."""
    timerel = params.get("timerel")
    if timerel is None:
        if "timeAt" in params or "endTimeAt" in params:
            raise bad_data("timerel", "timeAt and endTimeAt need timerel (before|after|between)")
        return TimeRange(None, None)
    if timerel not in ("before", "after", "between"):
        raise bad_data("timerel", f"{timerel!r} is not before, after or between")
    if "timeAt" not in params:
        raise bad_data("timeAt", f"timerel={timerel} needs timeAt")
    at = parse_time(params["timeAt"], "timeAt")
    if timerel == "before":
        return TimeRange(None, at)
    if timerel == "after":
        return TimeRange(at, None)
    if "endTimeAt" not in params:
        raise bad_data("endTimeAt", "timerel=between needs endTimeAt")
    end = parse_time(params["endTimeAt"], "endTimeAt")
    if end <= at:
        raise bad_data("endTimeAt", "endTimeAt must be after timeAt")
    return TimeRange(at, end)


def aggregation_plan(
    params: Mapping[str, str], span: TimeRange
) -> tuple[list[str], timedelta, datetime, datetime]:
    """Methods, period, start and end of an aggregated query; refused when unbounded."""
    methods = [m.strip() for m in params.get("aggrMethods", "").split(",") if m.strip()]
    if not methods:
        raise bad_data("aggrMethods", f"aggregatedValues needs aggrMethods (of {list(AGGREGATES)})")
    unknown = [m for m in methods if m not in AGGREGATES]
    if unknown:
        raise bad_data("aggrMethods", f"unsupported {unknown}; supported: {list(AGGREGATES)}")
    period = parse_duration(params.get("aggrPeriodDuration", "PT0S"))
    if span.start is None or span.end is None:
        raise bad_data(
            "timerel",
            "aggregated values need a bounded interval: timerel=between with timeAt and endTimeAt",
        )
    length = span.end - span.start
    if length > MAX_AGGREGATED_SPAN:
        raise too_many("endTimeAt", f"the interval is longer than {MAX_AGGREGATED_SPAN.days} days")
    if period == timedelta(0):
        period = length  # PT0S: one period spanning the whole interval
    if math.ceil(length / period) > MAX_PERIODS:
        raise too_many("aggrPeriodDuration", f"more than {MAX_PERIODS} periods in the interval")
    return list(dict.fromkeys(methods)), period, span.start, span.end


# --- SQL (constant texts, bound parameters) -------------------------------------------

_SERIES = "kpi = {kpi:String} AND scope = {scope:String} AND entity_id = {entity:String}"

# The series and their latest windows come from kpi_series_latest (one row per series,
# kept by the sink's materialized view: connectors/sinks/clickhouse/schema.py), not from
# grouping all of kpi; its FINAL rows are the newest row per series of kpi FINAL.
LIST_SQL = """SELECT kpi, scope, entity_id,
    toUnixTimestamp64Milli(window_start) AS start_ms,
    toUnixTimestamp64Milli(window_end) AS end_ms, value, samples
FROM kpi_series_latest FINAL
WHERE kpi IN {kpis:Array(String)}
ORDER BY kpi, scope, entity_id
LIMIT {limit:UInt32} OFFSET {offset:UInt32}"""

COUNT_SQL = """SELECT count() FROM kpi_series_latest FINAL WHERE kpi IN {kpis:Array(String)}"""

LATEST_SQL = f"""SELECT kpi, scope, entity_id,
    toUnixTimestamp64Milli(window_start) AS start_ms,
    toUnixTimestamp64Milli(window_end) AS end_ms, value, samples
FROM kpi_series_latest FINAL
WHERE {_SERIES}"""

_RANGE = (
    "window_start >= fromUnixTimestamp64Milli({start_ms:Int64}, 'UTC') "
    "AND window_start < fromUnixTimestamp64Milli({end_ms:Int64}, 'UTC')"
)


def instances_sql(descending: bool) -> str:
    """A series' windows in [start, end) (the bounds given as epoch milliseconds)."""
    order = "DESC" if descending else "ASC"
    return f"""SELECT toUnixTimestamp64Milli(window_start) AS start_ms,
    toUnixTimestamp64Milli(window_end) AS end_ms, value, samples
FROM kpi FINAL
WHERE {_SERIES} AND {_RANGE}
ORDER BY window_start {order}
LIMIT {{limit:UInt32}}"""


def aggregate_sql(methods: Sequence[str]) -> str:
    """Per period of ``{step_ms}`` from ``{start_ms}``: the samples behind the period (for
    small-cell suppression, as the series API counts a bucket's) and the asked methods,
    computed by ClickHouse."""
    columns = ",\n    ".join(f"{AGGREGATES[m]} AS {m}" for m in methods)
    return f"""SELECT intDiv(toUnixTimestamp64Milli(window_start) - {{start_ms:Int64}},
        {{step_ms:Int64}}) AS period,
    sum(samples) AS period_samples,
    {columns}
FROM kpi FINAL
WHERE {_SERIES} AND {_RANGE}
GROUP BY period
ORDER BY period"""


# --- representation ---------------------------------------------------------------


def iso(ms: int) -> str:
    """Epoch milliseconds as an ISO 8601 UTC date-time with a Z."""
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_dt(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


@dataclass(frozen=True)
class Window:
    """One stored KPI window of a series."""

    start_ms: int
    end_ms: int
    value: float | None  # None: suppressed for the caller (small cell)
    samples: int


Locator = Callable[[str, str], dict[str, Any] | None]  # (scope, entity) -> GeoJSON geometry


@dataclass(frozen=True)
class Mapping_:
    """What the entity mapping needs besides the row: the city and where things are."""

    city: City
    locate: Locator = field(default=lambda scope, entity: None)


def _property(value: Any, **extra: Any) -> dict[str, Any]:
    return {"type": "Property", "value": value, **extra}


def entity(series: SeriesId, kpi: Kpi | None, latest: Window | None, m: Mapping_) -> dict[str, Any]:
    """The series as a normalized KeyPerformanceIndicator entity (latest window's value)."""
    out: dict[str, Any] = {"id": series.urn, "type": KPI_TYPE}
    out["name"] = _property(series.kpi)
    if kpi is not None:
        out["description"] = _property(f"{kpi.formula} ({kpi.unit}), {kpi.window}")
        out["calculationFormula"] = _property(kpi.formula)
        out["calculationFrequency"] = _property(_frequency(kpi))
        out["process"] = _property(kpi.domain)
        entity_type, attrs = AGGREGATED_DATA.get(kpi.domain, (kpi.domain, (kpi.name,)))
        out["aggregatedData"] = _property([{"entityType": entity_type, "attrs": list(attrs)}])
    out["calculationMethod"] = _property("automatic")
    out["category"] = _property(["quantitative"])
    out["organization"] = _property(f"City of {m.city.name}")
    out["area"] = _property(series.entity if series.scope == "district" else m.city.name)
    if latest is not None:
        out["kpiValue"] = _kpi_value(latest, kpi)
        out["calculationPeriod"] = _property(
            {"from": iso(latest.start_ms), "to": iso(latest.end_ms)}
        )
    geometry = m.locate(series.scope, series.entity)
    if geometry is not None:
        out["location"] = {"type": "GeoProperty", "value": geometry}
    return out


def _frequency(kpi: Kpi) -> str:
    # Smart Data Models has no "every 15 minutes"; the nearest allowed value is hourly.
    return "hourly"


def _kpi_value(window: Window, kpi: Kpi | None) -> dict[str, Any]:
    extra: dict[str, Any] = {"observedAt": iso(window.start_ms)}
    if kpi is not None:
        extra["unitText"] = kpi.unit
    return _property(window.value, **extra)


def temporal_instances(windows: Sequence[Window], kpi: Kpi | None) -> list[dict[str, Any]]:
    """Normalized temporal representation: one Property instance per window."""
    return [_kpi_value(w, kpi) for w in windows]


def temporal_values(windows: Sequence[Window]) -> dict[str, Any]:
    """Simplified temporal representation (``temporalValues``): [value, observedAt] pairs."""
    return {"type": "Property", "values": [[w.value, iso(w.start_ms)] for w in windows]}


def aggregated_values(
    rows: Sequence[Sequence[Any]],
    methods: Sequence[str],
    start: datetime,
    end: datetime,
    period: timedelta,
    k: int = 0,
) -> dict[str, Any]:
    """Aggregated temporal representation: per method, [value, startAt, endAt] triples.

    ``rows`` are ``aggregate_sql`` rows (period index, samples, then the methods in order);
    periods without any window are left out; a period from fewer than ``k`` samples (a
    small cell, for the public) has every value null."""
    out: dict[str, Any] = {"type": "Property"}
    for method in methods:
        out[method] = []
    for row in rows:
        index, samples = int(row[0]), int(row[1])
        period_start = start + period * index
        period_end = min(period_start + period, end)
        for method, value in zip(methods, row[2:], strict=True):
            shown = _number(value) if samples >= k else None
            out[method].append([shown, iso_dt(period_start), iso_dt(period_end)])
    return out


def _number(value: Any) -> float | int | None:
    if value is None:
        return None
    number = float(value)
    if math.isnan(number) or math.isinf(number):
        return None
    return (
        int(number)
        if isinstance(value, int) or (isinstance(value, str) and value.isdigit())
        else number
    )


# --- content negotiation ----------------------------------------------------------


def negotiate(accept: str | None) -> str:
    """``application/ld+json`` or ``application/json`` (the default); 406 otherwise."""
    if not accept:
        return JSON
    for part in accept.split(","):
        media = part.split(";", 1)[0].strip().lower()
        if media == LD_JSON:
            return LD_JSON
        if media in (JSON, GEO_JSON, "*/*", "application/*"):
            return JSON
    raise NgsiError(406, "NotAcceptable", f"cannot answer in {accept!r}: use {LD_JSON} or {JSON}")


def context_urls(base_url: str) -> list[str]:
    """The @context of every answer: the KPI model's, then the NGSI-LD core, both local."""
    base = base_url.rstrip("/")
    return [f"{base}{CONTEXTS_PATH}/{KPI_CONTEXT}", f"{base}{CONTEXTS_PATH}/{CORE_CONTEXT}"]


def link_header(base_url: str) -> str:
    url = context_urls(base_url)[0]
    return f'<{url}>; rel="{CONTEXT_REL}"; type="{LD_JSON}"'


def respond(
    request: Request,
    body: Any,
    media: str,
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    """JSON-LD carries its @context in the body; JSON names it in a Link header."""
    base = str(request.base_url)
    out_headers = dict(headers or {})
    if media == LD_JSON:
        contexts = context_urls(base)
        if isinstance(body, list):
            body = [{**item, "@context": contexts} for item in body]
        else:
            body = {**body, "@context": contexts}
    else:
        out_headers["Link"] = ", ".join(filter(None, (out_headers.get("Link"), link_header(base))))
    return Response(
        json.dumps(body, ensure_ascii=False, allow_nan=False).encode(),
        status_code=status,
        media_type=media,
        headers=out_headers,
    )


_KINDS = {
    400: "BadRequestData",
    403: "TooManyResults",
    404: "ResourceNotFound",
    406: "NotAcceptable",
}


def as_ngsi(error: NgsiError | Problem) -> NgsiError:
    """An error of the shared API code (an unknown ``city``, a failed audit write) in the
    NGSI-LD form, so that every answer of these routes is ProblemDetails of ETSI's types."""
    if isinstance(error, NgsiError):
        return error
    kind = _KINDS.get(error.status, "InternalError")
    return NgsiError(error.status, kind, error.detail, error.parameter)


def error_response(request: Request, error: NgsiError) -> JSONResponse:
    return JSONResponse(
        error.body(instance=request.url.path),
        status_code=error.status,
        media_type="application/json",
    )


# --- reading ------------------------------------------------------------------------


def _read(context: ApiContext, city: City, sql: str, parameters: dict[str, Any]) -> QueryResult:
    try:
        return context.reader.read(sql, parameters, database=city.database)
    except QueryError as exc:
        raise NgsiError(503, "InternalError", f"the KPI store could not answer: {exc}") from exc


def _window(row: Sequence[Any]) -> Window:
    start_ms, end_ms, value, samples = row
    return Window(int(start_ms), int(end_ms), float(value), int(samples))


def _kpi_names(type_param: str | None) -> list[str]:
    """The KPIs a type selects: all for KeyPerformanceIndicator, none for other types."""
    if type_param is None:
        raise bad_data("type", "give type=KeyPerformanceIndicator (or attrs, q, geoQ)")
    types = {t.strip() for t in type_param.split(",") if t.strip()}
    if types & {KPI_TYPE, KPI_TYPE_IRI}:
        return list(KPIS)
    return []


def path_id(request: Request, decoded: str) -> str:
    """The entity id as the client wrote it in the path, before the server decoded it once:
    an id's parts are percent-encoded (``%3A`` for a ':' inside a name), and the decoded
    path would merge them. A path segment encoded as a whole (``urn%3Angsi-ld%3A...``) is
    decoded once, to the id."""
    raw = request.scope.get("raw_path")
    if not raw:
        return decoded
    segment = raw.decode("ascii", "replace")
    marker = "/entities/"
    segment = segment[segment.index(marker) + len(marker) :] if marker in segment else decoded
    return segment if segment.startswith("urn:") else unquote(segment)


def city_of(context: ApiContext, series: SeriesId) -> City:
    if series.city not in context.cities:
        raise not_found(f"no entity {series.urn}: no city {series.city!r}", "id")
    return context.cities[series.city]


# --- routes -------------------------------------------------------------------------

router = APIRouter(tags=["NGSI-LD"])


def _params(request: Request) -> dict[str, str]:
    return {k: v for k, v in request.query_params.items()}


@router.get(
    "/ngsi-ld/v1/entities",
    summary="KPI series as NGSI-LD KeyPerformanceIndicator entities (paged)",
    responses={400: {"description": "BadRequestData (ProblemDetails)"}},
)
def query_entities(
    request: Request,
    context: Annotated[ApiContext, Depends(get_context)],
    caller: Annotated[Caller, Depends(current_caller)],
) -> Response:
    try:
        return _query_entities(request, context, caller)
    except (NgsiError, Problem) as error:
        return error_response(request, as_ngsi(error))


def _query_entities(request: Request, context: ApiContext, caller: Caller) -> Response:
    params = _params(request)
    media = negotiate(request.headers.get("accept"))
    limit = parse_count(params.get("limit"), "limit", DEFAULT_LIMIT, MAX_LIMIT)
    offset = parse_count(params.get("offset"), "offset", 0, 2**31)
    options = options_of(params)
    count_wanted = params.get("count", "false").lower() == "true" or "count" in options
    if params.get("count", "false").lower() not in ("true", "false"):
        raise bad_data("count", "count is true or false")
    kpis = _kpi_names(params.get("type"))
    city = context.city(params.get("city"))
    ids = {s.strip() for s in params.get("id", "").split(",") if s.strip()}
    selected = [parse_id(i) for i in ids]
    headers: dict[str, str] = {}
    if selected:
        entities = [e for e in (_one_entity(context, city, caller, s) for s in selected) if e]
        entities = entities[offset : offset + limit]
        total = len(selected)
    else:
        entities, total = _list_entities(context, city, caller, kpis, limit, offset, count_wanted)
    if count_wanted:
        headers["NGSILD-Results-Count"] = str(total)
    links = _page_links(request, limit, offset, len(entities), total if count_wanted else None)
    if links:
        headers["Link"] = links
    record_access(context, caller, "/ngsi-ld/v1/entities", params, LIST_SQL, len(entities))
    if "keyValues" in options or "simplified" in options:
        entities = [_key_values(e) for e in entities]
    return respond(request, entities, media, headers=headers)


def _list_entities(
    context: ApiContext,
    city: City,
    caller: Caller,
    kpis: list[str],
    limit: int,
    offset: int,
    count_wanted: bool,
) -> tuple[list[dict[str, Any]], int]:
    if not kpis:
        return [], 0
    total = 0
    if count_wanted:
        total = int(_read(context, city, COUNT_SQL, {"kpis": kpis}).rows[0][0])
    if limit == 0:
        return [], total
    rows = _read(context, city, LIST_SQL, {"kpis": kpis, "limit": limit, "offset": offset}).rows
    mapping = mapping_for(context, city)
    out = []
    for kpi, scope, entity_id, *window in rows:
        series = SeriesId(city.id, kpi, scope, entity_id)
        latest = suppress(context, caller, kpi, scope, [_window(window)])
        out.append(entity(series, KPIS.get(kpi), latest[0] if latest else None, mapping))
    return out, total


def _one_entity(
    context: ApiContext, city: City, caller: Caller, series: SeriesId
) -> dict[str, Any] | None:
    if series.city != city.id:
        return None
    parameters = {"kpi": series.kpi, "scope": series.scope, "entity": series.entity}
    rows = _read(context, city, LATEST_SQL, parameters).rows
    if not rows:
        return None
    latest = suppress(context, caller, series.kpi, series.scope, [_window(rows[0][3:])])
    mapping = mapping_for(context, city)
    return entity(series, KPIS.get(series.kpi), latest[0] if latest else None, mapping)


def _key_values(entity_: dict[str, Any]) -> dict[str, Any]:
    """The simplified (keyValues) form: each attribute's value only."""
    return {
        k: (v["value"] if isinstance(v, dict) and "value" in v else v) for k, v in entity_.items()
    }


def _page_links(request: Request, limit: int, offset: int, returned: int, total: int | None) -> str:
    """RFC 8288 next/prev links, as NGSI-LD pagination gives them."""
    links = []
    base = str(request.url.remove_query_params(["offset", "limit"]))
    sep = "&" if "?" in base else "?"
    more = returned == limit and limit > 0 and (total is None or offset + limit < total)
    if more:
        query = urlencode({"limit": limit, "offset": offset + limit})
        links.append(f'<{base}{sep}{query}>; rel="next"; type="{JSON}"')
    if offset > 0 and limit > 0:
        query = urlencode({"limit": limit, "offset": max(0, offset - limit)})
        links.append(f'<{base}{sep}{query}>; rel="prev"; type="{JSON}"')
    return ", ".join(links)


@router.get(
    "/ngsi-ld/v1/entities/{entity_id:path}",
    summary="One KPI series as an NGSI-LD KeyPerformanceIndicator entity",
)
def retrieve_entity(
    entity_id: str,
    request: Request,
    context: Annotated[ApiContext, Depends(get_context)],
    caller: Annotated[Caller, Depends(current_caller)],
) -> Response:
    try:
        media = negotiate(request.headers.get("accept"))
        series = parse_id(path_id(request, entity_id))
        city = city_of(context, series)
        found = _one_entity(context, city, caller, series)
        if found is None:
            raise not_found(f"no entity {entity_id}", "id")
        record_access(
            context, caller, "/ngsi-ld/v1/entities/{id}", {"id": entity_id}, LATEST_SQL, 1
        )
        return respond(request, found, media)
    except (NgsiError, Problem) as error:
        return error_response(request, as_ngsi(error))


@router.get(
    "/ngsi-ld/v1/temporal/entities/{entity_id:path}",
    summary="A KPI series' windows: temporal or aggregated temporal representation",
)
def retrieve_temporal(
    entity_id: str,
    request: Request,
    context: Annotated[ApiContext, Depends(get_context)],
    caller: Annotated[Caller, Depends(current_caller)],
) -> Response:
    try:
        return _retrieve_temporal(entity_id, request, context, caller)
    except (NgsiError, Problem) as error:
        return error_response(request, as_ngsi(error))


def _retrieve_temporal(
    entity_id: str, request: Request, context: ApiContext, caller: Caller
) -> Response:
    params = _params(request)
    media = negotiate(request.headers.get("accept"))
    series = parse_id(path_id(request, entity_id))
    options = options_of(params)
    span = time_range(params)
    city = city_of(context, series)
    head = _one_entity(context, city, caller, series)
    if head is None:
        raise not_found(f"no entity {entity_id}", "id")
    attrs = {a.strip() for a in params.get("attrs", "").split(",") if a.strip()}
    wanted = not attrs or TEMPORAL_ATTRIBUTE in attrs
    body: dict[str, Any] = {"id": series.urn, "type": KPI_TYPE}
    headers: dict[str, str] = {}
    status = 200
    kpi = KPIS.get(series.kpi)
    base = {"kpi": series.kpi, "scope": series.scope, "entity": series.entity}
    if "aggregatedValues" in options:
        methods, period, start, end = aggregation_plan(params, span)
        if wanted:
            body[TEMPORAL_ATTRIBUTE] = _aggregate(
                context, city, caller, series, base, methods, period, start, end
            )
        sql = aggregate_sql(methods)
    else:
        last_n = parse_count(params.get("lastN"), "lastN", 0, MAX_LIMIT)
        if wanted:
            windows, truncated = _instances(context, city, caller, series, base, span, last_n)
            if truncated and windows:
                status = 206
                first, last = windows[0].start_ms, windows[-1].start_ms
                headers["Content-Range"] = f"date-time {iso(first)}-{iso(last)}/*"
            if "temporalValues" in options or "simplified" in options:
                body[TEMPORAL_ATTRIBUTE] = temporal_values(windows)
            else:
                body[TEMPORAL_ATTRIBUTE] = temporal_instances(windows, kpi)
        sql = instances_sql(False)
    record_access(
        context, caller, "/ngsi-ld/v1/temporal/entities/{id}", {"id": entity_id, **params}, sql, 1
    )
    return respond(request, body, media, status=status, headers=headers)


def _instances(
    context: ApiContext,
    city: City,
    caller: Caller,
    series: SeriesId,
    base: dict[str, Any],
    span: TimeRange,
    last_n: int,
) -> tuple[list[Window], bool]:
    """The windows in the range, oldest first; one page at most (True: more are left).

    A page is ``api_page_size`` windows (the series API's page), at most MAX_LIMIT."""
    limit = last_n or min(context.settings.api_page_size, MAX_LIMIT)
    parameters = {
        **base,
        "start_ms": ms(span.start) if span.start else -(2**62),
        "end_ms": ms(span.end) if span.end else 2**62,
        "limit": limit + 1,
    }
    rows = _read(context, city, instances_sql(bool(last_n)), parameters).rows
    windows = [_window(r) for r in rows[:limit]]
    if last_n:
        windows.reverse()
    truncated = len(rows) > limit and not last_n
    return suppress(context, caller, series.kpi, series.scope, windows), truncated


def _aggregate(
    context: ApiContext,
    city: City,
    caller: Caller,
    series: SeriesId,
    base: dict[str, Any],
    methods: list[str],
    period: timedelta,
    start: datetime,
    end: datetime,
) -> dict[str, Any]:
    parameters = {
        **base,
        "start_ms": ms(start),
        "end_ms": ms(end),
        "step_ms": round(period.total_seconds() * 1000),
    }
    rows = _read(context, city, aggregate_sql(methods), parameters).rows
    k = min_samples(context, caller, series.kpi)
    return aggregated_values(rows, methods, start, end, period, k)


@router.get(
    CONTEXTS_PATH + "/{name}",
    summary="The JSON-LD @context files the NGSI-LD answers reference (served, never fetched)",
)
def serve_context(name: str) -> Response:
    if name not in CONTEXT_FILES:
        raise Problem(404, f"no context {name!r} (served: {', '.join(CONTEXT_FILES)})")
    body = (CONTEXTS_DIR / name).read_bytes()
    return Response(body, media_type=LD_JSON, headers={"Cache-Control": "max-age=86400"})


# --- hooks on the rest of the API (suppression, locations) -----------------------------


def mapping_for(context: ApiContext, city: City) -> Mapping_:
    """The entity mapping of ``city``: its name and where its entities are."""
    if city.pack is None:
        return Mapping_(city)
    where = locations(city.pack.directory, city.pack.id)
    return Mapping_(city, lambda scope, entity: where.get((scope, entity)))


@lru_cache(maxsize=16)
def locations(directory: Path, city_id: str) -> dict[tuple[str, str], dict[str, Any]]:
    """GeoJSON geometries of a pack's entities, read once per pack: road segments (and the
    sensors on them) as lines, car parks as points, districts as their polygons, or, where
    the pack has none, as the mean point of what lies in them."""
    pack = load_pack(directory)
    reference = read_reference(pack)
    out: dict[tuple[str, str], dict[str, Any]] = {}
    points: dict[str, list[tuple[float, float]]] = {}
    for segment in reference.records.get("road_segments", []):
        line = [
            [segment["start_lon"], segment["start_lat"]],
            [segment["end_lon"], segment["end_lat"]],
        ]
        geometry = {"type": "LineString", "coordinates": line}
        out[("segment", str(segment["segment_id"]))] = geometry
        out[("sensor", str(segment["segment_id"]))] = geometry
        points.setdefault(str(segment["district"]), []).append(
            (segment["start_lon"], segment["start_lat"])
        )
    for park in reference.records.get("car_parks", []):
        point = (park["longitude"], park["latitude"])
        out[("car_park", str(park["car_park_id"]))] = {"type": "Point", "coordinates": list(point)}
        points.setdefault(str(park["district"]), []).append(point)
    layer = pack.layer
    if layer is not None:
        for name, geometry in zip(layer.names, layer.geometries, strict=True):
            out.setdefault(("district", name), shapely.geometry.mapping(geometry))
    for district, located in points.items():
        if district != UNKNOWN and located:
            lon = sum(p[0] for p in located) / len(located)
            lat = sum(p[1] for p in located) / len(located)
            out.setdefault(("district", district), {"type": "Point", "coordinates": [lon, lat]})
    return out


def min_samples(context: ApiContext, caller: Caller, kpi: str) -> int:
    """Small-cell suppression as the rest of the API applies it (``context.suppression``):
    for the public, a value from fewer than k samples is null; 0 (none) for a key's role."""
    return 0 if caller.role.at_least(Role.analyst) else context.suppression.k(kpi)


def suppress(
    context: ApiContext, caller: Caller, kpi: str, scope: str, windows: Sequence[Window]
) -> list[Window]:
    """The windows as ``caller`` may see them: a small cell's value is None (``null``)."""
    k = min_samples(context, caller, kpi)
    return [w if w.samples >= k else replace(w, value=None) for w in windows]
