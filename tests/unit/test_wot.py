"""W3C WoT Thing Descriptions: the ingest mapping generated from a city pack's TDs, and the
TDs the read API serves (`GET /v1/things/{id}`), validated against the W3C TD 1.1 JSON
Schema shipped in api/jsonschema/ (nothing is fetched)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.context import ApiContext, City
from api.queries import SinkReader
from connectors.sources.ingest_common import load_config
from connectors.sources.mqtt import MqttIngest
from connectors.sources.wot import ThingError, mapping_from_things, read_things, with_things
from core.city import load_pack
from core.settings import Settings

REPO = Path(__file__).resolve().parents[2]
AARHUS = REPO / "cities/aarhus"
SCHEMA = json.loads((REPO / "api/jsonschema/td-json-schema-validation.json").read_text())


def td_valid(td: dict[str, Any]) -> None:
    jsonschema.Draft7Validator(SCHEMA).validate(td)


def test_the_shipped_schema_is_the_w3c_td_1_1_schema_with_its_licence() -> None:
    assert SCHEMA["version"] == "1.1-09-November-2023"
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    assert "W3C Software and Document License" in (REPO / "api/jsonschema/LICENSE.md").read_text()


def test_the_aarhus_pack_things_generate_its_datastreams() -> None:
    things = read_things(AARHUS / "things")
    for thing in things:
        td_valid(thing.td)
    by_id = {d.id: d for d in mapping_from_things(things)}
    assert (by_id["101"].sensor, by_id["101"].field) == ("190744", "vehicle_count")
    assert (by_id["102"].field, by_id["102"].unit) == ("avg_speed_kmh", "m/s")
    # two properties on one topic: one observation whose result object has both
    assert by_id["103"].result == {"occupied": "vehicle_count", "capacity": "total_spaces"}
    assert by_id["103"].domain == "parking"


def test_generated_datastreams_ingest_like_written_ones() -> None:
    config = with_things(load_config(REPO / "infra/examples/ingest.toml"), AARHUS)
    assert config is not None
    ingest = MqttIngest(config, 300_000)
    from connectors.sources.mqtt import Message

    def observe(ds: str, body: dict[str, Any]) -> Any:
        topic = f"v1.1/Datastreams({ds})/Observations"
        return ingest.handle(Message(topic, json.dumps(body).encode(), 1, 1), 1.7e9)

    when = "2016-12-07T11:05:00Z"
    assert observe("101", {"phenomenonTime": when, "result": 12}) == ([], [])
    [outcome], _tokens = observe("102", {"phenomenonTime": when, "result": 12.5})
    assert outcome.reading.avg_speed_kmh == pytest.approx(45.0)  # m/s from the TD's unit
    assert outcome.event_id == "traffic:190744:1481108700000"
    [parked], _ = observe("103", {"phenomenonTime": when, "result": {"occupied": 3, "capacity": 9}})
    assert parked.reading.record["vehicle_count"] == 3


def test_a_datastream_both_written_and_described_is_refused(tmp_path: Path) -> None:
    pack = tmp_path / "pack"
    shutil.copytree(AARHUS / "things", pack / "things")
    td_path = pack / "things" / "traffic-190744.td.json"
    td = json.loads(td_path.read_text())
    td["properties"]["vehicleCount"]["forms"][0]["mqv:filter"] = "v1.1/Datastreams(1)/Observations"
    td_path.write_text(json.dumps(td))
    with pytest.raises(ThingError, match="datastream ids must be unique"):
        with_things(load_config(REPO / "infra/examples/ingest.toml"), pack)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"cs:domain": "weather"}, "cs:domain 'weather'"),
        ({"cs:sensor": ""}, "needs cs:sensor"),
        ({"properties": {"p": {"cs:field": "vehicle_count", "forms": [
            {"href": "mqtt://b:1883", "mqv:topic": "plant/counter", "contentType": "x"}]}}},
         "not a SensorThings"),
        ({"properties": {"p": {"cs:field": "colour", "forms": [
            {"href": "mqtt://b:1883/v1.1/Datastreams(9)/Observations", "contentType": "x"}]}}},
         "not a value field"),
    ],
)  # fmt: skip
def test_a_td_that_cannot_be_mapped_is_refused_naming_it(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    td = json.loads((AARHUS / "things/traffic-190744.td.json").read_text())
    (tmp_path / "things").mkdir()
    (tmp_path / "things" / "x.td.json").write_text(json.dumps({**td, **change}))
    with pytest.raises(ThingError, match=message) as refused:
        with_things(None, tmp_path)
    assert "x.td.json" in str(refused.value)


def test_a_pack_without_things_changes_nothing(tmp_path: Path) -> None:
    config = load_config(REPO / "infra/examples/ingest.toml")
    assert with_things(config, tmp_path) is config
    assert with_things(None, None) is None


@pytest.fixture
def api(tmp_path: Path) -> TestClient:
    settings = Settings.model_validate(
        {"data_dir": tmp_path, "clickhouse_url": f"chdb://{tmp_path}"}
    )
    pack = load_pack(AARHUS)
    city = City("aarhus", "Aarhus", "Europe/Copenhagen", "citystream", "", pack)
    context = ApiContext(settings, {"aarhus": city}, SinkReader(settings, 5.0))
    return TestClient(create_app(context))


def test_every_sensor_of_the_pack_has_a_valid_td(api: TestClient) -> None:
    pack = load_pack(AARHUS)
    from core.city import read_reference

    records = read_reference(pack).records
    ids = [f"traffic:{s['segment_id']}" for s in records["road_segments"][:25]]
    ids += [f"air:{s['segment_id']}" for s in records["road_segments"][:5]]
    ids += [f"parking:{p['car_park_id']}" for p in records["car_parks"]]
    for thing in ids:
        answer = api.get(f"/v1/things/{thing}")
        assert answer.status_code == 200, (thing, answer.text)
        assert answer.headers["content-type"].startswith("application/td+json")
        td = answer.json()
        td_valid(td)
        assert f"{td['cs:domain']}:{td['cs:sensor']}" == thing
        assert td["id"] == f"urn:citystream:aarhus:{thing}"


def test_a_pack_td_is_served_as_the_pack_has_it(api: TestClient) -> None:
    written = json.loads((AARHUS / "things/traffic-190744.td.json").read_text())
    for name in ("traffic:190744", "urn:citystream:aarhus:traffic:190744"):
        served = api.get(f"/v1/things/{name}").json()
        assert served == written
        td_valid(served)


def test_an_unknown_sensor_is_a_problem(api: TestClient) -> None:
    for name in ("traffic:nope", "158895", "urn:citystream:boston:traffic:1"):
        answer = api.get(f"/v1/things/{name}")
        assert answer.status_code == 404
        assert answer.headers["content-type"].startswith("application/problem+json")


def test_the_schema_catches_a_broken_td(api: TestClient) -> None:
    """The check can fail: a TD without security or forms is not a TD."""
    td = api.get("/v1/things/traffic:190744").json()
    del td["security"]
    with pytest.raises(jsonschema.ValidationError):
        td_valid(td)
