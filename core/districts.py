"""Which district a point lies in: a city pack's district polygons, found with an STRtree.

A city gives its districts as polygons (GeoJSON, read with the standard json module and
``shapely.geometry.shape``, or an OGC GeoPackage, read with pyogrio, which carries GDAL)
with one property naming each district. A point lies in the first feature (file order)
whose polygon covers it; a point in no polygon, or at one of the pack's *unlocated* points
(a geocoder's default, such as Boston's City Hall), is in district ``unknown``.

Coordinates are WGS84 longitude/latitude (GeoJSON's RFC 7946 order). A layer in another
coordinate system is refused rather than silently misplacing every point.

Every defect of a layer is a :class:`Problem` naming the file and the feature (and the
line, for GeoJSON), so ``citystream city validate`` can list them all. At run time an
invalid polygon (say a self-intersecting ring) is repaired with ``shapely.make_valid``
instead of stopping a replay; validation still reports it so the pack gets fixed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import shapely
from shapely.geometry import Point, shape
from shapely.geometry.base import BaseGeometry
from shapely.validation import explain_validity, make_valid

UNKNOWN = "unknown"
UNLOCATED_TOLERANCE_DEG = 1e-9  # "at" an unlocated point: equal up to float noise
WGS84_NAMES = (
    "EPSG:4326",
    "OGC:CRS84",
    "urn:ogc:def:crs:OGC:1.3:CRS84",
    "urn:ogc:def:crs:EPSG::4326",
)
POLYGONAL = ("Polygon", "MultiPolygon")


@dataclass(frozen=True)
class Problem:
    """One defect of a city pack: where (file, line or feature) and what."""

    file: str
    message: str
    line: int | None = None
    feature: str | None = None  # "feature 19 (Hyde Park)"

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        if self.feature:
            where += f": {self.feature}"
        return f"{where}: {self.message}"


class DistrictLayerError(ValueError):
    """A district layer that cannot be used at all; ``problems`` says why."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        super().__init__("; ".join(map(str, problems)))
        self.problems = list(problems)


@dataclass(frozen=True)
class Feature:
    """One feature of a district layer as read, before any check."""

    index: int  # 0-based position in the file
    line: int | None  # GeoJSON: line where the feature starts
    name: Any  # the name property's value (may be missing or not a string)
    geometry: BaseGeometry | None
    error: str | None = None  # why the geometry could not be read

    @property
    def label(self) -> str:
        named = f" ({self.name})" if isinstance(self.name, str) and self.name.strip() else ""
        return f"feature {self.index}{named}"


# --- reading ------------------------------------------------------------------------


def read_features(path: Path, name_property: str) -> tuple[list[Feature], list[Problem]]:
    """Every feature of a GeoJSON or GeoPackage file; problems with the file as a whole."""
    suffix = path.suffix.lower()
    if not path.is_file():
        return [], [Problem(path.name, "district file not found")]
    if suffix in (".geojson", ".json"):
        return _read_geojson(path, name_property)
    if suffix == ".gpkg":
        return _read_geopackage(path, name_property)
    return [], [Problem(path.name, "district file must be .geojson, .json or .gpkg")]


def _read_geojson(path: Path, name_property: str) -> tuple[list[Feature], list[Problem]]:
    text = path.read_text(encoding="utf-8")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        return [], [Problem(path.name, f"not JSON: {exc.msg}", line=exc.lineno)]
    if not isinstance(document, dict) or document.get("type") != "FeatureCollection":
        return [], [Problem(path.name, "not a GeoJSON FeatureCollection")]
    problems = _geojson_crs_problems(path.name, document.get("crs"))
    raw = document.get("features")
    if not isinstance(raw, list):
        return [], [*problems, Problem(path.name, "FeatureCollection without a features list")]
    lines = feature_lines(text, len(raw))
    return [_geojson_feature(i, lines[i], f, name_property) for i, f in enumerate(raw)], problems


def _geojson_crs_problems(file: str, crs: Any) -> list[Problem]:
    """RFC 7946 GeoJSON is WGS84; an old-style ``crs`` member may say otherwise."""
    if crs is None:
        return []
    name = str(((crs or {}).get("properties") or {}).get("name", ""))
    if any(name.upper() == n.upper() for n in WGS84_NAMES):
        return []
    return [Problem(file, f"coordinates must be WGS84 longitude/latitude, the file says {name!r}")]


def _geojson_feature(index: int, line: int | None, raw: Any, name_property: str) -> Feature:
    if not isinstance(raw, dict):
        return Feature(index, line, None, None, "not a GeoJSON feature")
    name = (raw.get("properties") or {}).get(name_property)
    try:
        geometry = shape(raw["geometry"]) if raw.get("geometry") else None
    except (KeyError, TypeError, ValueError, AttributeError, shapely.errors.GEOSException) as exc:
        return Feature(index, line, name, None, f"unreadable geometry: {exc}")
    return Feature(index, line, name, geometry)


def feature_lines(text: str, count: int) -> list[int | None]:
    """The line each element of the top-level ``features`` array starts on (1-based).

    The json module keeps no positions, so the array is walked with ``raw_decode`` from
    its opening bracket: a problem can then be named with the file's own line numbers.
    """
    lines: list[int | None] = [None] * count
    key = text.find('"features"')
    start = text.find("[", key) if key >= 0 else -1
    if start < 0:
        return lines
    decoder = json.JSONDecoder()
    position, newlines, counted_to = start + 1, 0, 0
    for i in range(count):
        while position < len(text) and text[position] in " \t\r\n,":
            position += 1
        newlines += text.count("\n", counted_to, position)
        counted_to = position
        lines[i] = newlines + 1
        try:
            _, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError:
            break
    return lines


def _read_geopackage(path: Path, name_property: str) -> tuple[list[Feature], list[Problem]]:
    from pyogrio.errors import DataSourceError, FieldError
    from pyogrio.raw import read

    try:
        meta, fids, geometries, fields = read(path, columns=[name_property])
    except (DataSourceError, FieldError) as exc:
        return [], [Problem(path.name, f"cannot read the GeoPackage: {exc}")]
    names = list(meta["fields"])
    if name_property not in names:
        return [], [Problem(path.name, f"layer has no field {name_property!r} (fields: {names})")]
    problems = []
    crs = meta.get("crs") or ""
    if crs.upper() not in (n.upper() for n in WGS84_NAMES):
        problems.append(Problem(path.name, f"layer must be in EPSG:4326 (WGS84), it is {crs!r}"))
    values = fields[names.index(name_property)]
    features = []
    for i, (wkb, name) in enumerate(zip(geometries, values, strict=True)):
        fid = int(fids[i]) if fids is not None else i
        try:
            geometry = shapely.from_wkb(wkb) if wkb is not None else None
            features.append(Feature(i, None, name, geometry))
        except shapely.errors.GEOSException as exc:
            features.append(Feature(i, None, name, None, f"unreadable geometry (fid {fid}): {exc}"))
    return features, problems


# --- checking -----------------------------------------------------------------------


def feature_problems(file: str, features: Iterable[Feature]) -> list[Problem]:
    """Each unnamed, empty, non-polygonal, invalid or duplicate-named feature, by name."""
    problems: list[Problem] = []
    first: dict[str, Feature] = {}
    for f in features:

        def problem(message: str, f: Feature = f) -> None:
            problems.append(Problem(file, message, f.line, f.label))

        if not isinstance(f.name, str) or not f.name.strip():
            problem(f"has no district name (property is {f.name!r})")
        elif f.name.strip() in first:
            other = first[f.name.strip()]
            at = f" (line {other.line})" if other.line else ""
            problem(f"duplicate district name {f.name.strip()!r}: also feature {other.index}{at}")
        else:
            first[f.name.strip()] = f
        if f.error:
            problem(f.error)
        elif f.geometry is None or f.geometry.is_empty:
            problem("has no geometry")
        elif f.geometry.geom_type not in POLYGONAL:
            problem(f"is a {f.geometry.geom_type}, not a Polygon or MultiPolygon")
        elif not f.geometry.is_valid:
            problem(f"invalid polygon: {explain_validity(f.geometry)}")
    return problems


def _usable(geometry: BaseGeometry) -> BaseGeometry:
    """An invalid polygon repaired (its polygonal part), so lookups never raise."""
    if geometry.is_valid:
        return geometry
    repaired = make_valid(geometry)
    polygons = [g for g in getattr(repaired, "geoms", [repaired]) if g.geom_type in POLYGONAL]
    return shapely.union_all(polygons) if polygons else repaired


# --- looking up ---------------------------------------------------------------------


class DistrictLayer:
    """Point → district name for one layer; build with :meth:`load`."""

    def __init__(
        self,
        names: Sequence[str],
        geometries: Sequence[BaseGeometry],
        unlocated: Iterable[tuple[float, float]] = (),
        problems: Sequence[Problem] = (),
    ) -> None:
        self.names = list(names)
        self.geometries = list(geometries)
        self.unlocated = [(float(lat), float(lon)) for lat, lon in unlocated]
        self.problems = list(problems)  # what validation reports; the layer works anyway
        self.tree = shapely.STRtree(self.geometries)
        self.district = lru_cache(maxsize=65536)(self._district)  # repeated points are common

    @classmethod
    def load(
        cls, path: Path, name_property: str, unlocated: Iterable[tuple[float, float]] = ()
    ) -> DistrictLayer:
        """The layer of a file; unusable features are left out and listed in ``problems``.

        Raises :class:`DistrictLayerError` when the file cannot be read at all, has no
        usable feature, or is not in WGS84.
        """
        features, file_problems = read_features(path, name_property)
        problems = file_problems + feature_problems(path.name, features)
        if file_problems:
            raise DistrictLayerError(problems)
        names, geometries = [], []
        for f in features:
            usable = isinstance(f.name, str) and f.name.strip() and f.geometry is not None
            if usable and f.geometry is not None and f.geometry.geom_type in POLYGONAL:
                names.append(f.name.strip())
                geometries.append(_usable(f.geometry))
        if not names:
            raise DistrictLayerError([*problems, Problem(path.name, "no usable district polygon")])
        return cls(names, geometries, unlocated, problems)

    def district_names(self) -> list[str]:
        """Every district once, in file order."""
        return list(dict.fromkeys(self.names))

    def _district(self, lat: float, lon: float) -> str:
        if not (math.isfinite(lat) and math.isfinite(lon)):
            return UNKNOWN
        for u_lat, u_lon in self.unlocated:
            if abs(lat - u_lat) <= UNLOCATED_TOLERANCE_DEG and abs(lon - u_lon) <= (
                UNLOCATED_TOLERANCE_DEG
            ):
                return UNKNOWN
        hits = self.tree.query(Point(lon, lat), predicate="intersects")
        return self.names[int(hits.min())] if len(hits) else UNKNOWN
