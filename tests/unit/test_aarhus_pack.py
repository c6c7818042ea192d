"""The shipped Aarhus city pack (cities/aarhus): valid, and the same reference data and
sources as `citystream replay aarhus` (the shipped files of data/aarhus/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from citystream.city_cli import pack_problems, validate
from citystream.replay import AarhusFiles
from connectors.sources.aarhus import read_segments
from connectors.sources.aarhus_parking import read_car_parks
from connectors.sources.city_files import parser_for
from core.city import city_id, load_pack, read_reference
from core.family import CITY

AARHUS = Path(__file__).resolve().parents[2] / "cities" / "aarhus"


def test_the_shipped_aarhus_pack_validates(capsys: pytest.CaptureFixture[str]) -> None:
    assert pack_problems(AARHUS) == []
    assert validate(AARHUS) == 0
    out = capsys.readouterr().out
    assert "OK: aarhus (Aarhus, Europe/Copenhagen); districts: attribute" in out
    assert "sources: traffic, air, parking" in out


def test_its_id_is_the_default_city_scope() -> None:
    pack = load_pack(AARHUS)
    assert city_id(AARHUS) == pack.id == CITY == "aarhus"
    assert pack.spec.timezone == "Europe/Copenhagen"
    assert pack.spec.districts.attribute and pack.layer is None


def test_its_files_are_the_shipped_ones() -> None:
    pack = load_pack(AARHUS)
    shipped = AarhusFiles.shipped()
    files = {s.name: pack.path(s.file).resolve() for s in pack.spec.sources}
    assert files == {
        "traffic": shipped.traffic.resolve(),
        "air": shipped.air.resolve(),
        "parking": shipped.parking.resolve(),
    }
    reference = {k: pack.path(r.file).resolve() for k, r in pack.spec.reference.items()}
    assert reference == {
        "road_segments": shipped.metadata.resolve(),
        "car_parks": shipped.car_parks.resolve(),
    }
    kinds = {s.name: s.kind for s in pack.spec.sources}
    assert kinds == {"traffic": "aarhus_traffic", "air": "aarhus_air", "parking": "aarhus_parking"}
    # the replays publish their own reference data, so `city replay` does not repeat it
    own = {k for s in pack.spec.sources for k in parser_for(s).publishes}
    assert own == set(pack.spec.reference)


def test_its_reference_records_are_those_the_aarhus_replays_publish() -> None:
    reference = read_reference(load_pack(AARHUS))
    assert reference.problems == []
    shipped = AarhusFiles.shipped()
    segments, bad_segments = read_segments(shipped.metadata)
    car_parks, bad_car_parks = read_car_parks(shipped.car_parks)
    assert (bad_segments, bad_car_parks) == ([], [])
    assert reference.records == {"road_segments": segments, "car_parks": car_parks}
    assert len(segments) == 449 and len(car_parks) == 8
    assert {s["district"] for s in segments} >= {"8000", "8200"}
