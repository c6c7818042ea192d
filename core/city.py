"""City packs: a city as configuration (``cities/<id>/city.toml`` and the files it names).

A pack says who the city is (``id``, the ``entity_id`` of the city scope; ``name``; an
IANA ``timezone``), where a location's district comes from (``[districts]``: polygons in a
GeoJSON or GeoPackage file, or an attribute of the reference data), its reference data
(``[reference.<kind>]``: districts, service categories, road segments, car parks) and its
file sources (``[[sources]]``: which columns of which file fill the canonical events). A
new CSV then takes a few lines of TOML rather than a Python class. The format is described
in docs/cities.md; ``citystream city init`` writes a commented example.

This module reads and checks the pack (pydantic models, then the files they name) and turns
reference rows into the records of the reference topics. It is core: it knows no Kafka and
no source code; parsers for ``kind = "…"`` sources are registered in connectors.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import re
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import IO, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.districts import UNKNOWN, DistrictLayer, DistrictLayerError, Problem

PACK_FILE = "city.toml"
NAME = re.compile(r"^[a-z][a-z0-9_-]*$")
ReferenceKind = Literal["districts", "service_categories", "road_segments", "car_parks"]
Domain = Literal["service", "traffic", "air", "parking"]


# --- canonical fields ----------------------------------------------------------------
# What each reference kind and each domain's events are made of. ``required`` fields must
# be mapped (by name, or in ``columns``) to a file column; ``optional`` ones may be.


@dataclass(frozen=True)
class Fields:
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    numbers: tuple[str, ...] = ()  # parsed as finite floats
    counts: tuple[str, ...] = ()  # parsed as whole numbers >= 0
    located_by: tuple[str, str] | None = None  # (lat, lon) fields placing it in a district

    @property
    def all(self) -> tuple[str, ...]:
        return (*self.required, *self.optional)


REFERENCE_FIELDS: dict[str, Fields] = {
    "districts": Fields(
        ("district",), ("name", "grid_emission_kg_per_kwh", "population"),
        numbers=("grid_emission_kg_per_kwh",), counts=("population",),
    ),
    "service_categories": Fields(("category", "sla_minutes"), ("name",), counts=("sla_minutes",)),
    "road_segments": Fields(
        ("segment_id", "free_flow_speed_kmh", "start_lat", "start_lon", "end_lat", "end_lon"),
        ("name", "district", "length_m", "road_type"),
        numbers=("free_flow_speed_kmh", "length_m", "start_lat", "start_lon", "end_lat",
                 "end_lon"),
        located_by=("start_lat", "start_lon"),
    ),
    "car_parks": Fields(
        ("car_park_id", "latitude", "longitude", "total_spaces"),
        ("name", "address", "district"),
        numbers=("latitude", "longitude"), counts=("total_spaces",),
        located_by=("latitude", "longitude"),
    ),
}  # fmt: skip
REFERENCE_KEYS = {
    "districts": "district",
    "service_categories": "category",
    "road_segments": "segment_id",
    "car_parks": "car_park_id",
}
REFERENCE_TOPICS = {
    "districts": "city.districts.v1",
    "service_categories": "city.service_categories.v1",
    "road_segments": "city.road_segments.v1",
    "car_parks": "city.car_parks.v1",
}
# A declarative source's columns (besides its id column): service rows are whole requests
# (one row → opened, and closed when it has a close time); the others one reading a row.
SOURCE_FIELDS: dict[str, Fields] = {
    "service": Fields(
        ("category", "opened_at"),
        ("closed_at", "sla_due_at", "latitude", "longitude", "district"),
    ),
    "traffic": Fields(
        ("event_time", "vehicle_count", "avg_speed_kmh"),
        ("avg_measured_time_s", "median_measured_time_s", "status"),
    ),
    "air": Fields(
        (
            "event_time",
            "ozone",
            "particulate_matter",
            "carbon_monoxide",
            "sulfure_dioxide",
            "nitrogen_dioxide",
        ),
        ("latitude", "longitude"),
    ),
    "parking": Fields(("event_time", "vehicle_count", "total_spaces")),
}


# --- the models ----------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _known_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"{name!r} is not a known IANA time zone") from exc
    return name


class DistrictsSpec(_Strict):
    """Polygons (``file`` + ``name_property``) or an attribute of the reference data."""

    file: str | None = Field(None, description="District polygons: .geojson or .gpkg")
    name_property: str | None = Field(None, description="The property naming each district")
    unlocated: list[tuple[float, float]] = Field(
        default_factory=list, description="[lat, lon] points meaning 'no real location'"
    )
    attribute: bool = Field(
        False, description="Districts are the `district` column of reference rows and events"
    )

    @model_validator(mode="after")
    def _one_way(self) -> DistrictsSpec:
        if self.attribute == (self.file is not None):
            raise ValueError("give either file (+ name_property) or attribute = true")
        if self.file is not None and not self.name_property:
            raise ValueError("polygons need name_property (the property naming a district)")
        for lat, lon in self.unlocated:
            if not (-90 <= lat <= 90 and -180 <= lon <= 180):
                raise ValueError(f"unlocated point [{lat}, {lon}] is not [lat, lon]")
        return self

    @property
    def polygons(self) -> bool:
        return self.file is not None


class ReferenceSpec(_Strict):
    """One reference file: canonical field → file column (unmapped fields: same name)."""

    file: str
    columns: dict[str, str] = Field(default_factory=dict)


class SourceSpec(_Strict):
    """One file source: which file, which columns fill which canonical fields, and time."""

    name: str
    domain: Domain
    file: str
    kind: str | None = Field(None, description="A registered parser instead of `columns`")
    id_column: str | None = Field(None, description="The column identifying the entity")
    columns: dict[str, str] = Field(default_factory=dict)
    time_format: str = Field("iso", description="strptime format of local times, or 'iso'")
    timezone: str | None = Field(None, description="IANA zone of the times (default: the city's)")
    identifiers: list[str] = Field(
        default_factory=list,
        description="Canonical fields that single out a person or a person's device (e.g. "
        "request_id of a 311 case): pseudonymised at the source (docs/rights.md)",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME.match(value):
            raise ValueError(f"{value!r}: a source name is lower case letters, digits, _ and -")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        return None if value is None else _known_zone(value)

    @model_validator(mode="after")
    def _declared(self) -> SourceSpec:
        if self.kind is None:
            fields = SOURCE_FIELDS[self.domain]
            if not self.id_column:
                raise ValueError("a declarative source needs id_column")
            unknown = sorted(set(self.columns) - set(fields.all))
            if unknown:
                raise ValueError(f"unknown {self.domain} fields {unknown}; known: {fields.all}")
            missing = [f for f in fields.required if f not in self.columns]
            if missing:
                raise ValueError(f"columns must map the {self.domain} fields {missing}")
        unknown_ids = sorted(set(self.identifiers) - {"request_id", *self.columns})
        if unknown_ids:
            raise ValueError(f"identifiers {unknown_ids} are neither request_id nor mapped")
        return self


class CitySpec(_Strict):
    """The whole of city.toml."""

    id: str
    name: str
    timezone: str
    districts: DistrictsSpec
    reference: dict[ReferenceKind, ReferenceSpec] = Field(default_factory=dict)
    sources: list[SourceSpec] = Field(default_factory=list)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not NAME.match(value):
            raise ValueError(f"{value!r}: a city id is lower case letters, digits, _ and -")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return _known_zone(value)

    @model_validator(mode="after")
    def _unique_sources(self) -> CitySpec:
        names = [s.name for s in self.sources]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"source names must be unique: {duplicates}")
        return self


# --- loading -------------------------------------------------------------------------


class CityPackError(ValueError):
    """A pack that cannot be loaded; ``problems`` names each defect with file and line."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(map(str, problems)))
        self.problems = problems


@dataclass
class CityPack:
    """A loaded pack: its spec and directory; files are opened when asked for."""

    directory: Path
    spec: CitySpec
    text: str = field(repr=False, default="")

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.spec.timezone)

    def path(self, name: str) -> Path:
        """A file the pack names, relative to the pack (absolute paths stay as they are)."""
        return self.directory / name

    def source(self, name: str) -> SourceSpec:
        for source in self.spec.sources:
            if source.name == name:
                return source
        known = ", ".join(s.name for s in self.spec.sources) or "none"
        raise KeyError(f"{self.id}: no source {name!r} (sources: {known})")

    def source_zone(self, source: SourceSpec) -> ZoneInfo:
        return ZoneInfo(source.timezone or self.spec.timezone)

    @cached_property
    def layer(self) -> DistrictLayer | None:
        """The district polygons (None when districts are an attribute); loaded once."""
        d = self.spec.districts
        if d.file is None or d.name_property is None:
            return None
        return DistrictLayer.load(self.path(d.file), d.name_property, d.unlocated)

    def district_at(self, lat: float | None, lon: float | None) -> str:
        """The district of a point (``unknown`` without a point or outside every polygon)."""
        layer = self.layer
        if layer is None or lat is None or lon is None:
            return UNKNOWN
        return layer.district(lat, lon)


def read_spec(directory: Path) -> tuple[CitySpec, str]:
    """city.toml as a :class:`CitySpec`; every defect raised at once with its line."""
    path = directory / PACK_FILE
    if not path.is_file():
        raise CityPackError([Problem(str(path), "no city.toml here: not a city pack")])
    text = path.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = int(m.group(1)) if (m := re.search(r"line (\d+)", str(exc))) else None
        raise CityPackError([Problem(PACK_FILE, f"not valid TOML: {exc}", line)]) from exc
    try:
        return CitySpec.model_validate(data), text
    except ValidationError as exc:
        raise CityPackError(
            [
                Problem(PACK_FILE, _message(e), locate(text, e["loc"]))
                for e in exc.errors(include_url=False)
            ]
        ) from exc


def load_pack(directory: Path) -> CityPack:
    """The pack in ``directory``; :class:`CityPackError` if city.toml is not valid."""
    spec, text = read_spec(directory)
    return CityPack(directory, spec, text)


def city_id(directory: Path) -> str:
    """Only the pack's id (the city scope's entity_id): cheap, for the processors."""
    return read_spec(directory)[0].id


def _message(error: Any) -> str:
    where = ".".join(str(p) for p in error["loc"])
    text = str(error["msg"]).removeprefix("Value error, ")
    return f"{where}: {text}" if where else text


def locate(text: str, loc: tuple[Any, ...]) -> int | None:
    """The line of city.toml a validation error's location points at, as near as it can.

    tomllib keeps no positions: the tables (``[districts]``, the n-th ``[[sources]]``) and
    then the key are searched for in the text.
    """
    lines = text.splitlines()
    start, found = 0, None
    parts = list(loc)
    table = ""
    while parts:
        part = parts.pop(0)
        if isinstance(part, int) and table:
            headers = [i for i, s in enumerate(lines) if s.strip() == f"[[{table}]]"]
            if part < len(headers):
                start, found = headers[part], headers[part] + 1
            continue
        name = str(part)
        table = f"{table}.{name}" if table else name
        for i in range(start, len(lines)):
            stripped = lines[i].strip()
            if stripped in (f"[{table}]", f"[[{table}]]") or re.match(
                rf"^{re.escape(name)}\s*=", stripped
            ):
                start, found = i, i + 1
                break
    return found


# --- reading the files a pack names ----------------------------------------------------


def open_text(path: Path) -> IO[str]:
    """A CSV file, plain or gzipped, as UTF-8 text."""
    binary: IO[bytes] = path.open("rb")
    if path.suffix == ".gz":
        binary = gzip.GzipFile(fileobj=binary, mode="rb")  # type: ignore[assignment]
    return io.TextIOWrapper(binary, encoding="utf-8", newline="")


def csv_header(path: Path) -> list[str]:
    """The first row of a CSV file ([] for an empty file)."""
    with open_text(path) as handle:
        return next(csv.reader(handle), [])


def csv_rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """(line, row) of every data row; the header is line 1."""
    with open_text(path) as handle:
        for line, row in enumerate(csv.DictReader(handle), start=2):
            yield line, {k: (v or "") for k, v in row.items() if isinstance(k, str)}


def column_of(spec: ReferenceSpec | SourceSpec, name: str) -> str:
    """The file column of a canonical field: mapped, or the field's own name."""
    return spec.columns.get(name, name)


class RowError(ValueError):
    """A reference row that cannot become a record."""


def _number(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise RowError(f"{name} is not a number: {text!r}") from exc
    if not math.isfinite(value):
        raise RowError(f"{name} is not finite: {text!r}")
    return value


def _count(text: str, name: str) -> int:
    value = _number(text, name)
    if value != int(value) or value < 0:
        raise RowError(f"{name} must be a whole number >= 0: {text!r}")
    return int(value)


def reference_record(
    kind: str, spec: ReferenceSpec, row: dict[str, str], district_at: Callable[..., str] | None
) -> dict[str, Any]:
    """One reference row as its topic's record; the district from the polygons when given."""
    fields = REFERENCE_FIELDS[kind]
    record: dict[str, Any] = {}
    for name in fields.all:
        text = row.get(column_of(spec, name), "").strip()
        if not text:
            if name in fields.required:
                raise RowError(f"{name} ({column_of(spec, name)}) is empty")
            record[name] = None
        elif name in fields.counts:
            record[name] = _count(text, name)
        elif name in fields.numbers:
            record[name] = _number(text, name)
        else:
            record[name] = text
    if kind == "service_categories" and record["sla_minutes"] <= 0:
        raise RowError(f"sla_minutes must be > 0: {record['sla_minutes']}")
    if fields.located_by and district_at is not None:
        record["district"] = district_at(*(record[f] for f in fields.located_by))
    elif "district" in fields.all and kind != "districts":
        record["district"] = record.get("district") or UNKNOWN
    for name in ("name", "address", "road_type"):
        if name in record and record[name] is None:
            record[name] = ""
    return record


@dataclass
class Reference:
    """Every reference record of a pack, by kind, and the rows that could not be read."""

    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    def sla_minutes(self) -> dict[str, int]:
        return {r["category"]: r["sla_minutes"] for r in self.records.get("service_categories", [])}


def read_reference(pack: CityPack) -> Reference:
    """The pack's reference data; districts also from the polygons' names.

    A polygon district without a row in the districts file still gets a record (name only,
    no emission factor); a districts row naming no polygon is a problem.
    """
    out = Reference()
    located = pack.district_at if pack.spec.districts.polygons else None
    for kind, spec in pack.spec.reference.items():
        path = pack.path(spec.file)
        records = out.records.setdefault(kind, [])
        if not path.is_file():
            out.problems.append(Problem(spec.file, f"reference file ({kind}) not found"))
            continue
        header = csv_header(path)
        missing = [
            f"{n} ({column_of(spec, n)})"
            for n in REFERENCE_FIELDS[kind].required
            if column_of(spec, n) not in header
        ]
        if missing:
            out.problems.append(Problem(spec.file, f"{kind}: missing columns {missing}", 1))
            continue
        for line, row in csv_rows(path):
            try:
                records.append(reference_record(kind, spec, row, located))
            except RowError as exc:
                out.problems.append(Problem(spec.file, f"{kind}: {exc}", line))
    _districts_from_polygons(pack, out)
    return out


def _districts_from_polygons(pack: CityPack, out: Reference) -> None:
    layer = _layer_or_none(pack)
    if layer is None:
        return
    names = layer.district_names()
    given = out.records.setdefault("districts", [])
    known = {r["district"] for r in given}
    file = pack.spec.reference["districts"].file if "districts" in pack.spec.reference else ""
    for record in given:
        if record["district"] not in names:
            out.problems.append(
                Problem(file, f"districts: {record['district']!r} is no polygon of the layer")
            )
    for name in names:
        if name not in known:
            given.append({"district": name, "name": name, "grid_emission_kg_per_kwh": None,
                          "population": None})  # fmt: skip
    for record in given:
        record["name"] = record.get("name") or record["district"]


def _layer_or_none(pack: CityPack) -> DistrictLayer | None:
    try:
        return pack.layer
    except DistrictLayerError:
        return None


# --- checking a whole pack -----------------------------------------------------------


def check_pack(directory: Path) -> tuple[CityPack | None, list[Problem]]:
    """Every problem of a pack: city.toml, the district layer, the sources' columns, and
    the reference data. The pack is None when city.toml itself is not valid."""
    try:
        pack = load_pack(directory)
    except CityPackError as exc:
        return None, exc.problems
    problems: list[Problem] = []
    problems += _layer_problems(pack)
    for source in pack.spec.sources:
        problems += source_column_problems(pack, source)
    problems += read_reference(pack).problems
    return pack, problems


def _layer_problems(pack: CityPack) -> list[Problem]:
    d = pack.spec.districts
    if d.file is None:
        return []
    try:
        layer = pack.layer
    except DistrictLayerError as exc:
        return exc.problems
    return layer.problems if layer is not None else []


def source_column_problems(
    pack: CityPack, source: SourceSpec, extra: tuple[str, ...] = ()
) -> list[Problem]:
    """A source's file exists and has every column it names (``extra``: a parser's own)."""
    path = pack.path(source.file)
    if not path.is_file():
        return [Problem(source.file, f"source {source.name!r}: file not found")]
    header = csv_header(path)
    wanted = [source.id_column] if source.id_column else []
    wanted += [column_of(source, n) for n in source.columns]
    wanted += list(extra)
    missing = [c for c in dict.fromkeys(wanted) if c not in header]
    if not missing:
        return []
    return [Problem(source.file, f"source {source.name!r}: missing columns {missing}", 1)]
