"""Air and parking through the ingest mapping: EPA AQI sub-indices from concentrations,
parking occupancy, the Smart Data Models' published examples, MultiDatastreams, and what
each domain rejects. Expected values are computed by hand in the comments."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from connectors.publishing import AIR, PARKING, Rejected
from connectors.sources.http_ingest import ngsi_event
from connectors.sources.ingest_common import (
    Accepted,
    DomainRecord,
    IngestError,
    aqi_index,
    load_config,
    validate_event,
)
from connectors.sources.mqtt import Message, MqttIngest, observation_part

REPO = Path(__file__).resolve().parents[2]
NGSI = REPO / "tests/fixtures/ngsi-ld"
CONFIG = load_config(REPO / "infra/examples/ingest.toml")
NOW_MS = 1_700_000_000_000
DAY_MS = 86_400_000


def entity(name: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((NGSI / name).read_text())
    return result


def accept(event: dict[str, Any]) -> DomainRecord:
    outcome = validate_event(event, "test", b"", NOW_MS, 300_000)
    assert isinstance(outcome, Accepted), outcome
    assert isinstance(outcome.reading, DomainRecord)
    return outcome.reading


def reject(event: dict[str, Any]) -> Rejected:
    outcome = validate_event(event, "test", b"", NOW_MS, 300_000)
    assert isinstance(outcome, Rejected), outcome
    return outcome


# --- EPA AQI -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "value", "unit", "index"),
    [
        # 69 ug/m3 NO2 * 24.45 / 46.01 = 36.67 ppb -> 36; 50/53 * 36 = 33.96 -> 34
        ("aqi:no2", 69, "GQ", 34.0),
        # 11 ug/m3 SO2 -> 4.198 ppb -> 4; 50/35 * 4 = 5.71 -> 6
        ("aqi:so2", 11, "GQ", 6.0),
        # 500 ug/m3 CO -> 436.4 ppb = 0.436 ppm -> 0.4; 50/4.4 * 0.4 = 4.5 -> 5
        ("aqi:co", 500, "GQ", 5.0),
        ("aqi:co", 0.5, "GP", 5.0),  # the same in mg/m3
        # PM10 60 ug/m3: 51 + 49/99 * (60 - 55) = 53.47 -> 53
        ("aqi:pm10", 60, "ug/m3", 53.0),
        # O3 0.06 ppm: 51 + 49/15 * (0.060 - 0.055) = 67.33 -> 67
        ("aqi:o3", 0.06, "ppm", 67.0),
        ("aqi:o3", 60, "ppb", 67.0),
        # 115 ug/m3 O3 -> 58.58 ppb -> 0.058 ppm; 51 + 49/15 * 0.003 = 60.8 -> 61
        ("aqi:o3", 115, "GQ", 61.0),
        ("aqi:no2", 2049, "ppb", 500.0),  # the top of the table
        ("aqi:pm10", 37.5, "AQI", 37.5),  # already an index
    ],
)
def test_concentrations_become_epa_sub_indices(
    kind: str, value: float, unit: str, index: float
) -> None:
    assert aqi_index(kind, value, unit) == index


@pytest.mark.parametrize(
    ("kind", "value", "unit"),
    [("aqi:co", 500, "GP"), ("aqi:o3", 0.201, "ppm"), ("aqi:no2", -1, "GQ")],
)
def test_concentrations_off_the_table_are_refused(kind: str, value: float, unit: str) -> None:
    with pytest.raises(IngestError) as err:
        aqi_index(kind, value, unit)
    assert err.value.reason == "invalid_event"


# --- canonical events ---------------------------------------------------------------------

AIR_EVENT = {
    "domain": "air",
    "sensor_id": "158895",
    "event_time": "2014-08-01T10:05:00Z",
    "ozone": 40.0,
    "particulate_matter": 55,
    "carbon_monoxide": 30.5,
    "sulfure_dioxide": 20.0,
    "nitrogen_dioxide": 100.0,
}
PARKING_EVENT = {
    "domain": "parking",
    "car_park_id": "NORREPORT",
    "event_time": "2014-08-01T10:05:00Z",
    "vehicle_count": 40,
    "total_spaces": 65,
}


def test_air_and_parking_events_become_their_avro_records() -> None:
    air = accept(AIR_EVENT)
    assert air.stream is AIR
    assert air.record == {
        "sensor_id": "158895",
        "event_time": 1_406_887_500_000,
        "event_time_ms": 1_406_887_500_000,
        "ozone": 40.0,
        "particulate_matter": 55,
        "carbon_monoxide": 30.5,
        "sulfure_dioxide": 20.0,
        "nitrogen_dioxide": 100.0,
        "latitude": None,
        "longitude": None,
    }
    parking = accept(PARKING_EVENT)
    assert parking.stream is PARKING
    assert (parking.record["vehicle_count"], parking.record["total_spaces"]) == (40, 65)
    free = {k: v for k, v in PARKING_EVENT.items() if k != "vehicle_count"}
    assert accept({**free, "available_spaces": 5}).record["vehicle_count"] == 60  # 65 - 5


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ({**AIR_EVENT, "ozone": float("nan")}, "invalid_event"),
        ({**AIR_EVENT, "ozone": -1.0}, "invalid_event"),
        ({**AIR_EVENT, "nitrogen_dioxide": 501.0}, "invalid_event"),
        ({k: v for k, v in AIR_EVENT.items() if k != "ozone"}, "invalid_event"),
        ({**AIR_EVENT, "event_time": "2099-01-01T00:00:00Z"}, "future_timestamp"),
        ({**AIR_EVENT, "latitude": 91.0}, "invalid_event"),
        ({**PARKING_EVENT, "vehicle_count": -1}, "invalid_event"),
        ({**PARKING_EVENT, "vehicle_count": 66}, "invalid_event"),  # more than the spaces
        ({**PARKING_EVENT, "total_spaces": 0}, "invalid_event"),
        ({**PARKING_EVENT, "vehicle_count": 1.5}, "invalid_event"),
        ({**PARKING_EVENT, "available_spaces": 30}, "invalid_event"),  # 40 + 30 > 65
        ({**PARKING_EVENT, "event_time": "2099-01-01T00:00:00Z"}, "future_timestamp"),
        ({**PARKING_EVENT, "event_time": "yesterday"}, "invalid_timestamp"),
    ],
)
def test_bad_air_and_parking_events(event: dict[str, Any], reason: str) -> None:
    assert reject(event).reason == reason


# --- NGSI-LD ------------------------------------------------------------------------------


def with_o3_pm10(e: dict[str, Any]) -> dict[str, Any]:
    """The published example lacks O3 and PM10, and its CO is given in mg/m3 as 500."""
    normalized = isinstance(e["NO2"], dict)
    add = {"O3": 115, "PM10": 60, "CO": 0.5}
    units = {"O3": "GQ", "PM10": "GQ", "CO": "GP"}
    for name, value in add.items():
        e[name] = (
            {"type": "Property", "value": value, "unitCode": units[name]} if normalized else value
        )
    if not normalized:
        e["CO"] = 500  # key-values: no unitCode, ug/m3 by the mapping (500 ug/m3 = 0.5 mg/m3)
    return e


@pytest.mark.parametrize(
    "name", ["AirQualityObserved-normalized.jsonld", "AirQualityObserved-keyvalues.jsonld"]
)
def test_air_quality_observed_examples_map_to_sub_indices(name: str) -> None:
    got = ngsi_event(CONFIG.ngsi_ld, with_o3_pm10(entity(name)))
    assert got == {
        "domain": "air",
        "sensor_id": "195041",  # refPointOfInterest through [ngsi_ld.sensors]
        "event_time": "2016-03-15T12:00:00+00:00",  # the interval's end
        "ozone": 61.0,
        "particulate_matter": 53.0,
        "carbon_monoxide": 5.0,
        "sulfure_dioxide": 6.0,
        "nitrogen_dioxide": 34.0,
        "longitude": -3.712247222222222,
        "latitude": 40.423852777777775,
    }
    assert accept(got).record["ozone"] == 61.0


def test_air_quality_observed_as_published_is_refused() -> None:
    # normalized: CO 500 mg/m3 is off the AQI table; key-values: no O3, no PM10
    with pytest.raises(IngestError) as err:
        ngsi_event(CONFIG.ngsi_ld, entity("AirQualityObserved-normalized.jsonld"))
    assert err.value.reason == "invalid_event" and "beyond the AQI table" in str(err.value)
    event = ngsi_event(CONFIG.ngsi_ld, entity("AirQualityObserved-keyvalues.jsonld"))
    assert reject(event).reason == "invalid_event"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"NO2": {"type": "Property", "value": 69, "unitCode": "CEL"}}, "wrong_unit"),
        ({"PM10": {"type": "Property", "value": 60, "unitCode": "59"}}, "wrong_unit"),  # ppm
        ({"SO2": {"type": "Property", "value": -3, "unitCode": "GQ"}}, "invalid_event"),
        ({"dateObserved": {"type": "Property", "value": "2099-01-01T00:00:00Z"}}, "future"),
        ({"type": "WaterQualityObserved"}, "unknown_entity"),
    ],
)
def test_bad_air_quality_observed(change: dict[str, Any], reason: str) -> None:
    e = with_o3_pm10(entity("AirQualityObserved-normalized.jsonld"))
    e.update(change)
    try:
        outcome: Accepted | Rejected = validate_event(
            ngsi_event(CONFIG.ngsi_ld, e), "t", b"", NOW_MS, 0
        )
    except IngestError as exc:
        outcome = Rejected(exc.reason, str(exc), "t", b"")
    assert isinstance(outcome, Rejected)
    assert outcome.reason == ("future_timestamp" if reason == "future" else reason)


@pytest.mark.parametrize(
    "name", ["OffStreetParking-normalized.jsonld", "OffStreetParking-keyvalues.jsonld"]
)
def test_off_street_parking_examples(name: str) -> None:
    got = ngsi_event(CONFIG.ngsi_ld, entity(name))
    assert got == {
        "domain": "parking",
        "car_park_id": "SKOLEBAKKEN",
        "event_time": "2021-03-11T15:51:02+00:00",  # observationDateTime
        "vehicle_count": 282,
        "available_spaces": 132,
        "total_spaces": 414,
    }
    record = accept({**got, "event_time": "2016-12-07T11:00:00Z"}).record
    assert (record["vehicle_count"], record["total_spaces"]) == (282, 414)


def test_off_street_parking_with_only_free_spots_and_inconsistent_counts() -> None:
    e = entity("OffStreetParking-keyvalues.jsonld")
    del e["occupiedSpotNumber"]
    assert accept(ngsi_event(CONFIG.ngsi_ld, e)).record["vehicle_count"] == 282  # 414 - 132
    e["availableSpotNumber"] = 500
    assert reject(ngsi_event(CONFIG.ngsi_ld, e)).reason == "invalid_event"


def test_parking_spot_is_a_one_space_car_park() -> None:
    e = entity("ParkingSpot-normalized.jsonld")
    got = ngsi_event(CONFIG.ngsi_ld, e)
    assert got == {
        "domain": "parking",
        "car_park_id": "santander:daoiz_velarde_1_5:3",
        "event_time": "2018-09-21T12:00:00+00:00",  # status.observedAt
        "total_spaces": 1,
        "vehicle_count": 0,  # free
    }
    e["status"] = {**e["status"], "value": "occupied"}
    assert ngsi_event(CONFIG.ngsi_ld, e)["vehicle_count"] == 1
    e["status"] = {**e["status"], "value": "closed"}
    with pytest.raises(IngestError) as err:
        ngsi_event(CONFIG.ngsi_ld, e)
    assert err.value.reason == "invalid_event"


# --- SensorThings MultiDatastreams ----------------------------------------------------------


def test_multidatastream_observation_is_one_air_reading() -> None:
    body = {"phenomenonTime": "2014-08-01T10:05:00Z", "result": [40, 55, 30.5, 20, 100]}
    part, complete = observation_part(
        CONFIG, "v1.1/MultiDatastreams(air-158895)/Observations", body
    )
    assert complete and part.sensor == "158895"
    assert part.values == {
        "ozone": 40.0,
        "particulate_matter": 55.0,
        "carbon_monoxide": 30.5,
        "sulfure_dioxide": 20.0,
        "nitrogen_dioxide": 100.0,
    }
    # concentrations, with a sixth (ignored) component: O3 115 ug/m3 -> 61 ... as above
    body = {"phenomenonTime": "2014-08-01T10:05:00Z", "result": [115, 60, 0.5, 11, 69, 7]}
    part, _ = observation_part(
        CONFIG, "v1.1/MultiDatastreams('air-187509-ugm3')/Observations", body
    )
    assert part.values == {
        "ozone": 61.0,
        "particulate_matter": 53.0,
        "carbon_monoxide": 5.0,
        "sulfure_dioxide": 6.0,
        "nitrogen_dioxide": 34.0,
    }


def test_multidatastream_mistakes() -> None:
    ingest = MqttIngest(CONFIG, 300_000)

    def reason(topic: str, body: object) -> str:
        result = ingest.handle(Message(topic, json.dumps(body).encode(), 1, 1), NOW_MS / 1000)
        assert result is not None
        outcome = result[0][0]
        assert isinstance(outcome, Rejected)
        return outcome.reason

    topic = "v1.1/MultiDatastreams(air-158895)/Observations"
    when = "2014-08-01T10:05:00Z"
    assert reason(topic, {"phenomenonTime": when, "result": [1, 2, 3]}) == "invalid_event"
    assert reason(topic, {"phenomenonTime": when, "result": 5}) == "invalid_event"
    bad = {"phenomenonTime": when, "result": [1, 2, float("nan"), 4, 5]}
    assert reason(topic, bad) == "invalid_event"
    assert reason(topic, {"phenomenonTime": "2099-01-01T00:00:00Z", "result": [1] * 5}) == (
        "future_timestamp"
    )
    unknown = "v1.1/MultiDatastreams(1)/Observations"  # Datastream 1 exists, not as Multi
    assert reason(unknown, {"phenomenonTime": when, "result": [1] * 5}) == "unknown_datastream"


def test_scalar_parking_datastreams_join_free_and_total() -> None:
    ingest = MqttIngest(CONFIG, 300_000)
    when = "2014-08-01T10:05:00Z"
    free = Message(
        "v1.1/Datastreams(parking-BUSGADEHUSET-free)/Observations",
        json.dumps({"phenomenonTime": when, "result": 30}).encode(),
        1,
        1,
    )
    total = Message(
        "v1.1/Datastreams(parking-BUSGADEHUSET-total)/Observations",
        json.dumps({"phenomenonTime": when, "result": 130}).encode(),
        2,
        1,
    )
    assert ingest.handle(free, NOW_MS / 1000) == ([], [])
    result = ingest.handle(total, NOW_MS / 1000)
    assert result is not None
    (outcome,), tokens = result
    assert isinstance(outcome, Accepted) and isinstance(outcome.reading, DomainRecord)
    assert outcome.reading.record["vehicle_count"] == 100  # 130 - 30
    assert outcome.event_id == "parking:BUSGADEHUSET:1406887500000"
    assert tokens == [(1, 1), (2, 1)]


# --- JSON-LD @context ----------------------------------------------------------------------

SDM_ENV = "https://smartdatamodels.org/dataModel.Environment/"
SDM_TRANSPORT = "https://smartdatamodels.org/dataModel.Transportation/"
CORE = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld"


def traffic(**changes: Any) -> dict[str, Any]:
    e = entity("TrafficFlowObserved-keyvalues.jsonld")
    e.update(changes)
    return e


EXPECTED_TRAFFIC = {
    "domain": "traffic",
    "segment_id": "190744",
    "event_time": "2016-12-07T11:15:00+00:00",
    "vehicle_count": 197,
    "avg_speed_kmh": 52.6,
}


def test_full_iris_resolve_to_the_smart_data_model_terms() -> None:
    e = traffic()
    for name in ("intensity", "averageVehicleSpeed", "dateObservedTo"):
        e[SDM_TRANSPORT + name] = e.pop(name)
    e["type"] = SDM_TRANSPORT + "TrafficFlowObserved"
    assert ngsi_event(CONFIG.ngsi_ld, e) == EXPECTED_TRAFFIC


def test_a_custom_inline_context_renames_attributes() -> None:
    e = traffic(
        **{
            "@context": [
                {
                    "sdm": SDM_TRANSPORT,
                    "flow": "sdm:intensity",
                    "speed": {"@id": SDM_TRANSPORT + "averageVehicleSpeed"},
                    "Flow": "sdm:TrafficFlowObserved",
                },
                CORE,
            ],
            "type": "Flow",
        }
    )
    e["flow"], e["speed"] = e.pop("intensity"), e.pop("averageVehicleSpeed")
    assert ngsi_event(CONFIG.ngsi_ld, e) == EXPECTED_TRAFFIC


def test_a_custom_context_can_take_a_term_away() -> None:
    # "intensity" now means something else: it must not be read as the traffic count
    e = traffic(**{"@context": [{"intensity": "https://example.org/loudness"}, CORE]})
    got = ngsi_event(CONFIG.ngsi_ld, e)
    assert "vehicle_count" not in got
    assert reject(got).reason == "invalid_event"


def test_the_notification_context_applies_to_entities_without_one() -> None:
    e = traffic()
    del e["@context"]
    e["flow"] = e.pop("intensity")
    context = [{"flow": SDM_TRANSPORT + "intensity"}, CORE]
    assert ngsi_event(CONFIG.ngsi_ld, e, context) == EXPECTED_TRAFFIC


def test_remote_contexts_not_shipped_are_refused_never_fetched() -> None:
    e = traffic(**{"@context": ["https://example.org/my-context.jsonld", CORE]})
    with pytest.raises(IngestError) as err:
        ngsi_event(CONFIG.ngsi_ld, e)
    assert err.value.reason == "unknown_context"
    assert "never fetched" in str(err.value)


def test_air_quality_names_from_the_environment_context() -> None:
    # the newer lower-case terms, as full IRIs of the Environment context
    e = with_o3_pm10(entity("AirQualityObserved-keyvalues.jsonld"))
    for upper in ("O3", "PM10", "CO", "SO2", "NO2"):
        e[SDM_ENV + upper.lower()] = e.pop(upper)
    assert ngsi_event(CONFIG.ngsi_ld, e)["ozone"] == 61.0
