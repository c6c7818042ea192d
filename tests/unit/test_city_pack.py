"""City packs: the loader, the district resolver (GeoJSON and GeoPackage), the reference
data, and `citystream city validate/init` on good and broken packs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from pyogrio.raw import write
from shapely.geometry import shape

from citystream.cli import main
from core.city import CityPackError, city_id, load_pack, read_reference
from core.districts import UNKNOWN, DistrictLayer, DistrictLayerError, feature_lines
from core.settings import Settings

REPO = Path(__file__).resolve().parents[2]
BOSTON = REPO / "cities" / "boston"
CITY_HALL = (42.3594, -71.0587)
# (lat, lon) → neighbourhood, checked on a map of Boston
PLACES = {
    (42.3574, -71.0648): "Beacon Hill",  # 33 Beacon St, the first row of the 311 file
    (42.3467, -71.0972): "Fenway",  # Fenway Park
    (42.3398, -71.0892): "Fenway",  # Museum of Fine Arts
    (42.3691, -71.0395): "East Boston",  # Maverick Square
    (42.2529, -71.1236): "Hyde Park",  # inside the polygon whose ring was repaired
}


def to_geopackage(geojson: Path, name_property: str, target: Path) -> Path:
    """The same layer as an OGC GeoPackage, written with pyogrio (GDAL)."""
    features = json.loads(geojson.read_text())["features"]
    wkb = np.array([shape(f["geometry"]).wkb for f in features], dtype=object)
    names = np.array([f["properties"][name_property] for f in features], dtype=object)
    write(target, wkb, [names], [name_property], driver="GPKG", geometry_type="MultiPolygon",
          crs="EPSG:4326", promote_to_multi=True)  # fmt: skip
    return target


def scaffold(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    pack = tmp_path / "springfield"
    assert main(["city", "init", str(pack), "--timezone", "Europe/Berlin"]) == 0
    capsys.readouterr()
    return pack


def validate(pack: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = main(["city", "validate", str(pack)])
    return code, capsys.readouterr().out.strip().splitlines()


# --- the loader ----------------------------------------------------------------------


def test_the_boston_pack_loads_with_its_source_and_polygons() -> None:
    pack = load_pack(BOSTON)
    assert (pack.id, pack.spec.name, pack.zone.key) == ("boston", "Boston", "America/New_York")
    source = pack.source("requests")
    assert (source.domain, source.id_column, source.kind) == ("service", "CASE_ENQUIRY_ID", None)
    assert source.columns["opened_at"] == "OPEN_DT" and source.columns["category"] == "TYPE"
    assert pack.spec.districts.unlocated == [CITY_HALL]
    assert pack.layer is not None and len(pack.layer.district_names()) == 26
    assert city_id(BOSTON) == "boston"


def test_the_city_setting_names_a_pack_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYSTREAM_CITY", str(BOSTON))
    assert Settings().city == BOSTON
    assert "city pack" in (Settings.model_fields["city"].description or "").lower()


def test_an_unknown_source_is_named_with_the_known_ones() -> None:
    with pytest.raises(KeyError, match="no source 'tickets' \\(sources: requests\\)"):
        load_pack(BOSTON).source("tickets")


def test_city_toml_errors_name_the_line(tmp_path: Path) -> None:
    (tmp_path / "city.toml").write_text(
        'id = "x"\nname = "X"\ntimezone = "UTC"\n\n[districts]\nfile = "d.geojson"\n\n'
        '[[sources]]\nname = "a"\ndomain = "service"\nfile = "a.csv"\nid_column = "id"\n'
        '[sources.columns]\ncategory = "t"\nopened_at = "o"\n\n'
        '[[sources]]\nname = "b"\ndomain = "weather"\nfile = "b.csv"\n'
    )
    with pytest.raises(CityPackError) as caught:
        load_pack(tmp_path)
    problems = [str(p) for p in caught.value.problems]
    assert any(p.startswith("city.toml:5: districts: ") and "name_property" in p for p in problems)
    assert any(p.startswith("city.toml:19: sources.1.domain: ") for p in problems), problems


def test_a_declarative_source_must_map_its_required_fields(tmp_path: Path) -> None:
    (tmp_path / "city.toml").write_text(
        'id = "x"\nname = "X"\ntimezone = "UTC"\n[districts]\nattribute = true\n'
        '[[sources]]\nname = "a"\ndomain = "service"\nfile = "a.csv"\nid_column = "id"\n'
        '[sources.columns]\ncategory = "t"\ncolour = "c"\n'
    )
    with pytest.raises(CityPackError, match=r"city.toml:6: sources.0: .*unknown service fields"):
        load_pack(tmp_path)


# --- districts -----------------------------------------------------------------------


def test_points_resolve_to_neighbourhoods_with_the_geojson_layer() -> None:
    layer = load_pack(BOSTON).layer
    assert layer is not None
    for (lat, lon), name in PLACES.items():
        assert layer.district(lat, lon) == name, (lat, lon)


def test_city_hall_and_points_outside_every_polygon_are_unknown() -> None:
    pack = load_pack(BOSTON)
    assert pack.district_at(*CITY_HALL) == UNKNOWN
    assert pack.district_at(42.3594, -71.0588) == "Downtown"  # a step away from the point
    assert pack.district_at(42.3736, -71.1097) == UNKNOWN  # Harvard Square, Cambridge
    assert pack.district_at(None, None) == UNKNOWN


def test_a_geopackage_layer_resolves_exactly_as_its_geojson(tmp_path: Path) -> None:
    geojson = BOSTON / "boston_neighborhoods.geojson"
    gpkg = to_geopackage(geojson, "Name", tmp_path / "neighbourhoods.gpkg")
    from_json = DistrictLayer.load(geojson, "Name", [CITY_HALL])
    from_gpkg = DistrictLayer.load(gpkg, "Name", [CITY_HALL])
    assert from_gpkg.district_names() == from_json.district_names()
    grid = [(42.23 + i * 0.005, -71.19 + j * 0.005) for i in range(33) for j in range(39)]
    assert [from_gpkg.district(*p) for p in grid] == [from_json.district(*p) for p in grid]
    assert {from_gpkg.district(*p) for p in grid} >= {*PLACES.values(), UNKNOWN}


def test_a_layer_that_is_not_wgs84_is_refused(tmp_path: Path) -> None:
    geojson = BOSTON / "boston_neighborhoods.geojson"
    document = json.loads(geojson.read_text())
    document["crs"] = {"type": "name", "properties": {"name": "EPSG:2249"}}
    (tmp_path / "d.geojson").write_text(json.dumps(document))
    with pytest.raises(DistrictLayerError, match=r"WGS84.*EPSG:2249"):
        DistrictLayer.load(tmp_path / "d.geojson", "Name")


def test_feature_lines_follow_the_file() -> None:
    text = '{"type": "FeatureCollection",\n "features": [\n  {"a": 1},\n\n  {"b": [1,\n 2]},\n{}]}'
    assert feature_lines(text, 3) == [3, 5, 7]
    lines = feature_lines((BOSTON / "boston_neighborhoods.geojson").read_text(), 26)
    assert lines == list(range(2, 28))  # the shipped copy: one feature per line


# --- reference data ------------------------------------------------------------------


def test_boston_reference_is_its_26_districts_without_emission_factors() -> None:
    reference = read_reference(load_pack(BOSTON))
    assert reference.problems == []
    districts = reference.records["districts"]
    assert len(districts) == 26 and {d["grid_emission_kg_per_kwh"] for d in districts} == {None}
    assert {"district": "Fenway", "name": "Fenway", "grid_emission_kg_per_kwh": None,
            "population": None} in districts  # fmt: skip
    assert reference.sla_minutes() == {}


def test_reference_rows_get_the_district_of_their_point(tmp_path: Path) -> None:
    pack = tmp_path / "b"
    pack.mkdir()
    toml = (
        (BOSTON / "city.toml")
        .read_text()
        .replace(
            'file = "boston_neighborhoods.geojson"',
            f'file = "{BOSTON / "boston_neighborhoods.geojson"}"',
        )
    )
    toml += (
        '\n[reference.car_parks]\nfile = "parks.csv"\n'
        '[reference.car_parks.columns]\ncar_park_id = "id"\ntotal_spaces = "spaces"\n'
        '\n[reference.districts]\nfile = "districts.csv"\n'
        '\n[reference.service_categories]\nfile = "categories.csv"\n'
    )
    (pack / "city.toml").write_text(toml)
    (pack / "parks.csv").write_text(
        "id,name,latitude,longitude,spaces\nP1,Fenway,42.3467,-71.0972,500\n"
        "P2,Nowhere,42.3736,-71.1097,20\nP3,Bad,42.35,-71.06,-3\n"
    )
    (pack / "districts.csv").write_text(
        "district,name,grid_emission_kg_per_kwh\nFenway,Fenway,0.3\nAtlantis,Atlantis,0.1\n"
    )
    (pack / "categories.csv").write_text("category,name,sla_minutes\nPothole,Pothole,2880\n")
    reference = read_reference(load_pack(pack))
    parks = {p["car_park_id"]: p for p in reference.records["car_parks"]}
    assert parks["P1"]["district"] == "Fenway" and parks["P1"]["total_spaces"] == 500
    assert parks["P2"]["district"] == UNKNOWN and parks["P2"]["address"] == ""
    assert [str(p) for p in reference.problems] == [
        "parks.csv:4: car_parks: total_spaces must be a whole number >= 0: '-3'",
        "districts.csv: districts: 'Atlantis' is no polygon of the layer",
    ]
    fenway = next(d for d in reference.records["districts"] if d["district"] == "Fenway")
    assert fenway["grid_emission_kg_per_kwh"] == 0.3
    assert reference.sla_minutes() == {"Pothole": 2880}


# --- `citystream city validate` and `init` -------------------------------------------


def test_the_shipped_boston_pack_validates(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = validate(BOSTON, capsys)
    assert code == 0 and "OK: boston" in out[-1] and "26 district polygons" in out[-1]


def test_init_scaffolds_a_valid_pack_and_never_overwrites(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pack = scaffold(tmp_path, capsys)
    assert sorted(p.name for p in pack.iterdir()) == [
        "city.toml", "districts.geojson", "requests.csv", "service_categories.csv",
    ]  # fmt: skip
    assert validate(pack, capsys)[0] == 0
    assert load_pack(pack).spec.timezone == "Europe/Berlin"
    assert main(["city", "init", str(pack)]) == 1
    assert "exists already" in capsys.readouterr().err


def test_a_self_intersecting_polygon_is_named_by_file_line_and_feature(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pack = scaffold(tmp_path, capsys)
    path = pack / "districts.geojson"
    bowtie = "[[10.0, 50.5], [10.5, 51.0], [10.5, 50.5], [10.0, 51.0], [10.0, 50.5]]"
    text = path.read_text()
    square = text.split('"coordinates": [')[1].split("]]]")[0] + "]]"
    path.write_text(text.replace(square, bowtie, 1))
    code, out = validate(pack, capsys)
    assert code == 1
    assert re.fullmatch(
        r"districts\.geojson:2: feature 0 \(North\): invalid polygon: Self-intersection\[.*\]",
        out[0],
    ), out


def test_an_unknown_time_zone_is_named_with_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pack = scaffold(tmp_path, capsys)
    toml = pack / "city.toml"
    toml.write_text(toml.read_text().replace('"Europe/Berlin"', '"Mars/Olympus_Mons"', 1))
    code, out = validate(pack, capsys)
    assert code == 1
    assert out == ["city.toml:6: timezone: 'Mars/Olympus_Mons' is not a known IANA time zone"]


def test_a_missing_column_is_named_with_the_file_and_header_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pack = scaffold(tmp_path, capsys)
    requests = pack / "requests.csv"
    requests.write_text(requests.read_text().replace(",due,", ",due_at,", 1))
    code, out = validate(pack, capsys)
    assert code == 1
    assert out == ["requests.csv:1: source 'requests': missing columns ['due']"]


def test_a_duplicate_district_name_is_named_with_both_features(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pack = scaffold(tmp_path, capsys)
    path = pack / "districts.geojson"
    path.write_text(path.read_text().replace('"South"', '"North"'))
    code, out = validate(pack, capsys)
    assert code == 1
    assert out == [
        "districts.geojson:3: feature 1 (North): duplicate district name 'North': "
        "also feature 0 (line 2)"
    ]


def test_every_problem_is_listed_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pack = scaffold(tmp_path, capsys)
    path = pack / "districts.geojson"
    path.write_text(path.read_text().replace('"South"', '""'))
    (pack / "service_categories.csv").write_text("category,name,sla_minutes\nnoise,Noise,0\n")
    (pack / "requests.csv").unlink()
    code, out = validate(pack, capsys)
    assert code == 1
    assert out == [
        "districts.geojson:3: feature 1: has no district name (property is '')",
        "requests.csv: source 'requests': file not found",
        "service_categories.csv:2: service_categories: sla_minutes must be > 0: 0",
    ]


def test_a_source_naming_an_unregistered_kind_is_a_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pack = scaffold(tmp_path, capsys)
    toml = pack / "city.toml"
    text = toml.read_text()
    toml.write_text(text.replace('domain = "service"', 'domain = "service"\nkind = "x"'))
    code, out = validate(pack, capsys)
    assert code == 1 and out[0].startswith("city.toml: source 'requests': unknown kind 'x'")
