"""Boston's service KPIs recomputed from the 311 CSV and the district polygons (the oracle).

Written from the contract, not from the pipeline: its own CSV reading, its own local-time
handling (zoneinfo, offsets compared by fold), its own point-in-polygon (ray casting over
GeoJSON read with json, or GeoPackage read with sqlite3 and a small WKB reader). From the
pack's city.toml it takes only facts of the deployment: the city id, which file holds the
districts and which property names them, the 311 file, and a category SLA file if any.

The contract, per 15-minute window aligned to the UTC epoch, of each event's own time:

- A row is one request (``CASE_ENQUIRY_ID``, category ``TYPE``). It opens at ``OPEN_DT``
  and closes at ``CLOSED_DT`` when that is not empty. Times are America/New_York wall
  times ``%m/%d/%Y %I:%M:%S %p``; an ambiguous autumn time is the earlier instant, a time
  in the spring gap does not exist.
- A row without id or category, with a bad ``OPEN_DT`` or a bad coordinate counts for
  nothing. A bad ``CLOSED_DT`` or ``TARGET_DT``, or a close before the open, loses the
  close only.
- District: the first polygon (file order) holding (LONGITUDE, LATITUDE); ``unknown``
  without coordinates, at City Hall (42.3594, -71.0587) or outside every polygon.
- ``service.requests_opened`` = opens; ``service.response_minutes_p50/_p90`` = nearest
  rank of (close − open) in minutes over the closes; ``service.sla_met_pct`` = closes met
  × 100 / closes judged: met when close ≤ TARGET_DT, else (no TARGET_DT) when the minutes
  are ≤ the category's SLA; with neither the close is not judged. Scopes category,
  district, city (the pack's id). A (request, status, time) counts once.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import sqlite3
import struct
import tomllib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

Key = tuple[str, str, str, int]  # kpi, scope, entity_id, window_start (epoch ms)
Value = tuple[float, int]  # value, samples
Ring = list[tuple[float, float]]  # (x = longitude, y = latitude)
BOSTON = ZoneInfo("America/New_York")
TIME_FORMAT = "%m/%d/%Y %I:%M:%S %p"
CITY_HALL = (42.3594, -71.0587)  # (lat, lon): the geocoder's "no location" point
WINDOW_MS = 15 * 60_000


# --- the pack's facts ----------------------------------------------------------------


@dataclass(frozen=True)
class PackFacts:
    city: str
    districts: Path
    name_property: str
    requests: Path
    category_sla: dict[str, float] = field(default_factory=dict)


def pack_facts(directory: Path, file: Path | None = None) -> PackFacts:
    """What the oracle takes from a pack: ids and file names, no rules."""
    spec = tomllib.loads((directory / "city.toml").read_text(encoding="utf-8"))
    service = [s for s in spec.get("sources", []) if s.get("domain") == "service"]
    if not service:
        raise ValueError(f"{directory}: no service source in city.toml")
    sla: dict[str, float] = {}
    categories = spec.get("reference", {}).get("service_categories")
    if categories:
        column = categories.get("columns", {})
        with (directory / categories["file"]).open(encoding="utf-8", newline="") as handle:
            for row in csv.DictReader(handle):
                name = row[column.get("category", "category")].strip()
                sla[name] = float(row[column.get("sla_minutes", "sla_minutes")])
    return PackFacts(
        city=spec["id"],
        districts=directory / spec["districts"]["file"],
        name_property=spec["districts"]["name_property"],
        requests=file or directory / service[0]["file"],
        category_sla=sla,
    )


# --- polygons ------------------------------------------------------------------------


@dataclass(frozen=True)
class Area:
    """One district feature: its name and its polygons (each a list of rings)."""

    name: str
    polygons: list[list[Ring]]
    box: tuple[float, float, float, float]  # min x, min y, max x, max y

    def holds(self, x: float, y: float) -> bool:
        if not (self.box[0] <= x <= self.box[2] and self.box[1] <= y <= self.box[3]):
            return False
        return any(_odd_crossings(rings, x, y) for rings in self.polygons)


def _odd_crossings(rings: list[Ring], x: float, y: float) -> bool:
    """Ray casting (even-odd) over all the rings of a polygon: holes cancel out."""
    inside = False
    for ring in rings:
        for (x1, y1), (x2, y2) in zip(ring, ring[1:] + ring[:1], strict=True):
            if (y1 > y) != (y2 > y) and x < x1 + (y - y1) * (x2 - x1) / (y2 - y1):
                inside = not inside
    return inside


def _area(name: str, polygons: list[list[Ring]]) -> Area:
    xs = [p[0] for rings in polygons for ring in rings for p in ring]
    ys = [p[1] for rings in polygons for ring in rings for p in ring]
    return Area(name, polygons, (min(xs), min(ys), max(xs), max(ys)))


def read_areas(path: Path, name_property: str) -> list[Area]:
    """The district features in file order (GeoJSON or GeoPackage)."""
    if path.suffix.lower() == ".gpkg":
        return _geopackage_areas(path, name_property)
    document = json.loads(path.read_text(encoding="utf-8"))
    areas = []
    for feature in document["features"]:
        geometry = feature["geometry"]
        coords = geometry["coordinates"]
        polygons = [coords] if geometry["type"] == "Polygon" else coords
        rings = [[[(float(p[0]), float(p[1])) for p in ring] for ring in poly] for poly in polygons]
        areas.append(_area(str(feature["properties"][name_property]).strip(), rings))
    return areas


def _geopackage_areas(path: Path, name_property: str) -> list[Area]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        table, column = db.execute(
            "SELECT c.table_name, g.column_name FROM gpkg_contents c JOIN gpkg_geometry_columns g"
            " ON g.table_name = c.table_name WHERE c.data_type = 'features' LIMIT 1"
        ).fetchone()
        rows = db.execute(
            f'SELECT "{name_property}", "{column}" FROM "{table}" ORDER BY rowid'
        ).fetchall()
    return [_area(str(name).strip(), _gpkg_polygons(blob)) for name, blob in rows]


def _gpkg_polygons(blob: bytes) -> list[list[Ring]]:
    """A GeoPackage geometry: 'GP' header (+ envelope), then standard WKB."""
    if blob[:2] != b"GP":
        raise ValueError("not a GeoPackage geometry")
    envelope = {0: 0, 1: 32, 2: 48, 3: 48, 4: 64}[(blob[3] >> 1) & 0x07]
    polygons, _ = _wkb(blob, 8 + envelope)
    return polygons


def _wkb(data: bytes, at: int) -> tuple[list[list[Ring]], int]:
    """(polygons, next offset) of one WKB Polygon or MultiPolygon (ISO or EWKB Z/M)."""
    order = "<" if data[at] == 1 else ">"
    (code,) = struct.unpack_from(order + "I", data, at + 1)
    at += 5
    dims = 2 + bool(code & 0x80000000) + bool(code & 0x40000000)
    if code & 0x20000000:  # EWKB SRID
        at += 4
    code &= 0x0FFFFFFF
    dims += {0: 0, 1: 1, 2: 1, 3: 2}[code // 1000]
    kind = code % 1000
    (count,) = struct.unpack_from(order + "I", data, at)
    at += 4
    if kind == 3:
        rings: list[Ring] = []
        for _ in range(count):
            (points,) = struct.unpack_from(order + "I", data, at)
            at += 4
            values = struct.unpack_from(order + f"{points * dims}d", data, at)
            at += 8 * points * dims
            rings.append([(values[i], values[i + 1]) for i in range(0, len(values), dims)])
        return [rings], at
    if kind == 6:
        polygons: list[list[Ring]] = []
        for _ in range(count):
            part, at = _wkb(data, at)
            polygons += part
        return polygons, at
    raise ValueError(f"WKB type {code} is not a polygon")


# --- the rows ------------------------------------------------------------------------


def boston_ms(text: str) -> int | None:
    """Boston wall time to UTC ms: the earlier instant when ambiguous, None when it does
    not exist (spring gap) or does not parse."""
    try:
        naive = datetime.strptime(text.strip(), TIME_FORMAT)
    except ValueError:
        return None
    early, late = naive.replace(tzinfo=BOSTON, fold=0), naive.replace(tzinfo=BOSTON, fold=1)
    early_offset, late_offset = early.utcoffset(), late.utcoffset()
    if early_offset is not None and late_offset is not None and early_offset < late_offset:
        return None  # the clocks jumped over it: fold 0 reads it before, fold 1 after
    return round(early.astimezone(UTC).timestamp() * 1000)


def _rows(path: Path) -> Iterator[tuple[list[str], list[str]]]:
    with path.open("rb") as raw:
        data = gzip.GzipFile(fileobj=raw) if path.suffix == ".gz" else raw
        text = io.TextIOWrapper(data, encoding="utf-8", newline="")
        reader = csv.reader(text)
        header = next(reader, [])
        for row in reader:
            yield header, row


@dataclass(frozen=True)
class Close:
    minutes: float
    met: bool | None  # None: not judged


def _coordinate(text: str, limit: float) -> float | None:
    """A coordinate, None when empty; ValueError when it is not one."""
    if not text.strip():
        return None
    value = float(text)
    if not -limit <= value <= limit:  # also refuses nan
        raise ValueError(f"{value} is out of range")
    return value


class Districts:
    def __init__(self, areas: list[Area]) -> None:
        self.areas = areas
        self.cache: dict[tuple[float, float], str] = {}

    def of(self, lat: float | None, lon: float | None) -> str:
        if lat is None or lon is None or (lat, lon) == CITY_HALL:
            return "unknown"
        if (lat, lon) not in self.cache:
            found = next((a.name for a in self.areas if a.holds(lon, lat)), "unknown")
            self.cache[(lat, lon)] = found
        return self.cache[(lat, lon)]


def recompute(facts: PackFacts, window_ms: int = WINDOW_MS) -> dict[Key, Value]:
    """Every service KPI of the pack's 311 file: {key: (value, samples)}."""
    districts = Districts(read_areas(facts.districts, facts.name_property))
    opened: dict[tuple[str, str, int], int] = defaultdict(int)
    closes: dict[tuple[str, str, int], list[Close]] = defaultdict(list)
    seen: set[tuple[str, str, int]] = set()
    for header, row in _rows(facts.requests):
        if len(row) != len(header):
            continue
        r = dict(zip(header, row, strict=True))
        rid, category = r["CASE_ENQUIRY_ID"].strip(), r["TYPE"].strip()
        open_ms = boston_ms(r["OPEN_DT"])
        try:
            lat, lon = _coordinate(r["LATITUDE"], 90), _coordinate(r["LONGITUDE"], 180)
        except ValueError:
            continue  # a bad coordinate: the row counts for nothing
        if not rid or not category or open_ms is None:
            continue
        district = districts.of(lat, lon)
        scopes = (("category", category), ("district", district), ("city", facts.city))
        if (rid, "opened", open_ms) not in seen:
            seen.add((rid, "opened", open_ms))
            for scope, entity in scopes:
                opened[(scope, entity, open_ms - open_ms % window_ms)] += 1
        close = _close(r, open_ms, facts.category_sla.get(category))
        if close is not None and (rid, "closed", close[0]) not in seen:
            seen.add((rid, "closed", close[0]))
            for scope, entity in scopes:
                closes[(scope, entity, close[0] - close[0] % window_ms)].append(close[1])
    return _kpis(opened, closes)


def _close(r: dict[str, str], open_ms: int, sla: float | None) -> tuple[int, Close] | None:
    if not r["CLOSED_DT"].strip():
        return None
    close_ms = boston_ms(r["CLOSED_DT"])
    due_ms = boston_ms(r["TARGET_DT"]) if r["TARGET_DT"].strip() else None
    if close_ms is None or close_ms < open_ms or (r["TARGET_DT"].strip() and due_ms is None):
        return None
    minutes = (close_ms - open_ms) / 60_000
    if due_ms is not None:
        met: bool | None = close_ms <= due_ms
    else:
        met = None if sla is None else minutes <= sla
    return close_ms, Close(minutes, met)


def _rank(values: list[float], pct: int) -> float:
    ordered = sorted(values)
    return ordered[max(1, -(-pct * len(ordered) // 100)) - 1]


def _kpis(
    opened: dict[tuple[str, str, int], int], closes: dict[tuple[str, str, int], list[Close]]
) -> dict[Key, Value]:
    out: dict[Key, Value] = {
        ("service.requests_opened", *key): (float(n), n) for key, n in opened.items()
    }
    for key, items in closes.items():
        minutes = [c.minutes for c in items]
        out[("service.response_minutes_p50", *key)] = (_rank(minutes, 50), len(minutes))
        out[("service.response_minutes_p90", *key)] = (_rank(minutes, 90), len(minutes))
        judged = [c.met for c in items if c.met is not None]
        if judged:
            out[("service.sla_met_pct", *key)] = (100.0 * sum(judged) / len(judged), len(judged))
    return out


def expected_for_pack(
    directory: Path, file: Path | None = None, window_minutes: int = 15
) -> dict[Key, Value]:
    """What the pipeline should store for the pack's 311 source (``file``: another file)."""
    return recompute(pack_facts(directory, file), window_minutes * 60_000)
