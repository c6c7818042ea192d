"""``/v1/map/{layer}`` (GeoJSON with the latest window's values) and ``/v1/equity``.

Geometry comes from the city pack, read once per city on first use: district polygons
where the pack has them (e.g. Boston's neighbourhoods), else one point per district at
the mean of its road segments and car parks (Aarhus's districts are postal codes); road
segments as lines, sensors at their segment's midpoint (``traffic:<id>``, ``air:<id>``),
car parks as points. Coordinates are WGS84 longitude/latitude (RFC 7946).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Query, Request, Response
from shapely.geometry import mapping

from api.context import ApiContext, City, Context, CurrentCaller, Role, record_access
from api.problems import bad_parameter
from api.queries import clickhouse_time, parse_instant, shown
from api.routes_kpis import cache_headers, etag_of, known_kpi, not_modified
from core.city import CityPack, read_reference

router = APIRouter(prefix="/v1", tags=["map and equity"])

Layer = Literal["districts", "segments", "sensors", "car_parks"]
LAYERS: dict[str, tuple[str, str]] = {  # layer -> (KPI scope, default KPI)
    "districts": ("district", "traffic.avg_speed_kmh"),
    "segments": ("segment", "traffic.congestion_index"),
    "sensors": ("sensor", "devices.uptime_pct"),
    "car_parks": ("car_park", "parking.occupancy_pct"),
}
SENSOR_KINDS = ("traffic", "air")  # devices.uptime_pct names sensors <kind>:<segment id>


@dataclass
class Feature:
    id: str
    geometry: dict[str, Any]
    properties: dict[str, Any] = field(default_factory=dict)


_FEATURES: dict[Path, dict[str, list[Feature]]] = {}  # per pack directory, read once


def city_features(pack: CityPack | None) -> dict[str, list[Feature]]:
    """Every layer's features of a city, without values; read on first use, then kept."""
    if pack is None:
        return {name: [] for name in LAYERS}
    layers = _FEATURES.get(pack.directory)
    if layers is None:
        layers = _FEATURES[pack.directory] = read_features(pack)
    return layers


def read_features(pack: CityPack) -> dict[str, list[Feature]]:
    layers: dict[str, list[Feature]] = {name: [] for name in LAYERS}
    records = read_reference(pack).records
    points: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for seg in records.get("road_segments", []):
        start = (seg["start_lon"], seg["start_lat"])
        end = (seg["end_lon"], seg["end_lat"])
        props = {"name": seg.get("name"), "district": seg.get("district")}
        line = {"type": "LineString", "coordinates": [list(start), list(end)]}
        layers["segments"].append(Feature(str(seg["segment_id"]), line, props))
        middle = [(start[0] + end[0]) / 2, (start[1] + end[1]) / 2]
        for kind in SENSOR_KINDS:
            point = {"type": "Point", "coordinates": middle}
            sensor = f"{kind}:{seg['segment_id']}"
            layers["sensors"].append(Feature(sensor, point, {**props, "kind": kind}))
        if seg.get("district"):
            points[str(seg["district"])].append(start)
    for park in records.get("car_parks", []):
        at = (park["longitude"], park["latitude"])
        point = {"type": "Point", "coordinates": list(at)}
        props = {"name": park.get("name"), "district": park.get("district"),
                 "total_spaces": park.get("total_spaces")}  # fmt: skip
        layers["car_parks"].append(Feature(str(park["car_park_id"]), point, props))
        if park.get("district"):
            points[str(park["district"])].append(at)
    layers["districts"] = district_features(pack, points)
    return layers


def district_features(
    pack: CityPack, points: dict[str, list[tuple[float, float]]]
) -> list[Feature]:
    """Polygons from the pack's layer, else a point per district (mean of its places)."""
    layer = pack.layer
    if layer is not None:
        return [
            Feature(name, dict(mapping(geometry)), {"name": name})
            for name, geometry in zip(layer.names, layer.geometries, strict=True)
        ]
    features = []
    for district, places in sorted(points.items()):
        centre = [statistics.fmean(p[0] for p in places), statistics.fmean(p[1] for p in places)]
        point = {"type": "Point", "coordinates": centre}
        features.append(Feature(district, point, {"name": district}))
    return features


LATEST_SQL = """SELECT entity_id, value, samples, window_start, window_end FROM kpi FINAL
WHERE kpi = {kpi:String} AND scope = {scope:String} AND window_start = (
    SELECT max(window_start) FROM kpi
    WHERE kpi = {kpi:String} AND scope = {scope:String}
      AND window_start <= {at:DateTime64(3, 'UTC')})"""

# Without ``at``: the entities whose latest window is the newest of the layer's, from
# kpi_series_latest (one row per series) instead of kpi. The same rows: an entity has a
# window at the newest start exactly when that window is its latest.
NEWEST_SQL = """SELECT entity_id, value, samples, window_start, window_end
FROM kpi_series_latest FINAL
WHERE kpi = {kpi:String} AND scope = {scope:String} AND window_start = (
    SELECT max(window_start) FROM kpi_series_latest
    WHERE kpi = {kpi:String} AND scope = {scope:String})"""


@router.get(
    "/map/{layer}",
    summary="GeoJSON FeatureCollection of a layer with the latest window's KPI values",
    responses={200: {"content": {"application/geo+json": {}}}},
)
def map_layer(
    layer: Layer,
    request: Request,
    context: Context,
    caller: CurrentCaller,
    kpi: str | None = None,
    at: Annotated[str | None, Query(description="ISO 8601: the latest window up to it")] = None,
    city: str | None = None,
) -> Response:
    scope, default_kpi = LAYERS[layer]
    name = kpi or default_kpi
    definition = known_kpi(name)
    if scope not in definition.scopes:
        raise bad_parameter("kpi", f"{name} has no {scope} values (scopes: {definition.scopes})")
    place = context.city(city)
    parameters = {"kpi": name, "scope": scope}
    sql = NEWEST_SQL
    if at:
        parameters["at"] = clickhouse_time(parse_instant(at, "at"))
        sql = LATEST_SQL
    result = context.reader.read(sql, parameters, database=place.database)
    values = {str(r[0]): r for r in result.rows}
    full = caller.role.at_least(Role.analyst)
    k = context.suppression.k(name)
    features = []
    for feature in city_features(place.pack)[layer]:
        row = values.get(feature.id)
        value, suppressed = (None, False) if row is None else shown(row[1], int(row[2]), k, full)
        samples = None if row is None else int(row[2])
        features.append(
            {"type": "Feature", "id": feature.id, "geometry": feature.geometry,
             "properties": {**feature.properties, "id": feature.id, "value": value,
                            "samples": samples, "suppressed": suppressed}}
        )  # fmt: skip
    first = result.rows[0] if result.rows else None
    record_access(
        context, caller, "/v1/map/{layer}",
        {"layer": layer, "kpi": name, "at": at, "city": place.id}, sql, len(result.rows),
    )  # fmt: skip
    body = {
        "type": "FeatureCollection",
        "layer": layer,
        "city": place.id,
        "kpi": name,
        "unit": definition.unit,
        "window_start": first[3] if first else None,
        "window_end": first[4] if first else None,
        "suppression_k": k,
        "features": features,
    }
    payload = orjson.dumps(body)
    headers = cache_headers(context, caller, etag_of(payload))
    if not_modified(request, headers["ETag"]):
        return Response(status_code=304, headers=headers)
    return Response(payload, media_type="application/geo+json", headers=headers)


# --- equity ---------------------------------------------------------------------------------

# Each district's and the city's figures over the period, in one read (the dashboard's
# first load waits for it): the city's row has scope 'city'.
EQUITY_SQL = """SELECT scope, entity_id, avg(value) AS value,
    toUInt64(sum(samples)) AS samples, count() AS windows
FROM kpi FINAL
WHERE kpi = {kpi:String}
  AND (scope = 'district' AND entity_id != 'unknown'
       OR scope = 'city' AND entity_id = {city:String})
  AND window_start >= {from:DateTime64(3, 'UTC')} AND window_start < {to:DateTime64(3, 'UTC')}
GROUP BY scope, entity_id ORDER BY scope, entity_id"""

NEWEST_DISTRICT_SQL = """SELECT max(window_start), count() FROM kpi
WHERE kpi = {kpi:String} AND scope = 'district'"""


def equity_period(
    context: ApiContext, place: City, kpi: str, start: str | None, end: str | None
) -> tuple[datetime, datetime]:
    frm = parse_instant(start, "from") if start else None
    to = parse_instant(end, "to") if end else None
    if frm is None and to is None:
        result = context.reader.read(NEWEST_DISTRICT_SQL, {"kpi": kpi}, database=place.database)
        [[newest, count]] = result.rows
        if not count:
            return datetime(1970, 1, 1, tzinfo=UTC), datetime(1970, 1, 2, tzinfo=UTC)
        to = parse_instant(str(newest), "to") + timedelta(minutes=15)
    if frm is None:
        assert to is not None
        frm = to - timedelta(days=1)
    if to is None:
        to = frm + timedelta(days=1)
    if to <= frm:
        raise bad_parameter("to", "to must be later than from")
    if to - frm > timedelta(days=context.settings.api_max_span_days):
        days = context.settings.api_max_span_days
        raise bad_parameter("to", f"from..to spans more than {days} days")
    return frm, to


@router.get("/equity", summary="Each district's KPI over a period beside the city median")
def equity(
    request: Request,
    context: Context,
    caller: CurrentCaller,
    kpi: str,
    start: Annotated[str | None, Query(alias="from", description="ISO 8601, inclusive")] = None,
    to: Annotated[str | None, Query(description="ISO 8601, exclusive")] = None,
    city: str | None = None,
) -> Response:
    definition = known_kpi(kpi)
    if "district" not in definition.scopes:
        raise bad_parameter("kpi", f"{kpi} has no district values")
    place = context.city(city)
    frm, until = equity_period(context, place, kpi, start, to)
    parameters = {"kpi": kpi, "from": clickhouse_time(frm), "to": clickhouse_time(until),
                  "city": place.id}  # fmt: skip
    both = context.reader.read(EQUITY_SQL, parameters, database=place.database).rows
    rows = [row[1:] for row in both if row[0] == "district"]
    city_value = next((row[2] for row in both if row[0] == "city"), None)
    median = statistics.median(float(r[1]) for r in rows) if rows else None
    full = caller.role.at_least(Role.analyst)
    k = context.suppression.k(kpi)
    districts = []
    for district, value, samples, windows in rows:
        value_shown, suppressed = shown(float(value), int(samples), k, full)
        gap = None if value_shown is None or median is None else value_shown - median
        relative = None if gap is None or not median else gap / abs(median)
        districts.append(
            {"district": district, "value": value_shown, "city_median": median, "gap": gap,
             "relative_gap": relative, "samples": int(samples), "windows": int(windows),
             "suppressed": suppressed}
        )  # fmt: skip
    record_access(
        context, caller, "/v1/equity",
        {"kpi": kpi, "from": frm.isoformat(), "to": until.isoformat(), "city": place.id},
        EQUITY_SQL, len(rows),
    )  # fmt: skip
    body = {
        "kpi": kpi,
        "unit": definition.unit,
        "city": place.id,
        "from": frm.isoformat().replace("+00:00", "Z"),
        "to": until.isoformat().replace("+00:00", "Z"),
        "city_median": median,
        "city_value": city_value,
        "suppression_k": k,
        "districts": districts,
    }
    payload = orjson.dumps(body)
    headers = cache_headers(context, caller, etag_of(payload))
    if not_modified(request, headers["ETag"]):
        return Response(status_code=304, headers=headers)
    return Response(payload, media_type="application/json", headers=headers)
