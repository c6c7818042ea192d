"""Air and parking over both ingest paths, end to end: real HTTP requests (canonical events
and NGSI-LD notifications built from the Smart Data Models' published examples) and a
real MQTT client publishing SensorThings MultiDatastream and Datastream observations,
through `citystream ingest http` / `ingest mqtt`, Kafka, the air and parking processors
and ClickHouse.

The expected KPIs come from oracles/aarhus_air_parking.py (aggregate_air /
aggregate_parking) over what the test sent, written down here by hand.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from citystream.pipeline import Pipeline
from citystream.replay import AarhusFiles, wait_processed
from citystream.verify import stored_kpis
from connectors.publishing import EventPublisher
from connectors.sources.aarhus_parking import CAR_PARKS_TOPIC, read_car_parks
from core.settings import Settings
from oracles.aarhus_air_parking import (
    AirRow,
    ParkingRow,
    aggregate_air,
    aggregate_parking,
    read_car_park_districts,
)
from oracles.aarhus_traffic import read_metadata
from oracles.compare import compare
from tests.integration.test_ingest_http import (
    METADATA,
    entity,
    ingest,  # noqa: F401 - the fixture
    iso_ms,
    log_tail,
    notification,
    read_topic,
    start_command,
    stop_command,
)
from tests.integration.test_ingest_mqtt import Broker, Client, broker  # noqa: F401

pytestmark = pytest.mark.integration
SHIPPED = AarhusFiles.shipped()


def at(minute: int) -> str:
    return f"2016-12-07T11:{minute:02}:00Z"


def publish_car_parks(settings: Settings) -> None:
    """The car park reference data, as the parking replay publishes it."""
    events = EventPublisher(settings, "test-reference", reference_topics=(CAR_PARKS_TOPIC,))
    events.setup()
    car_parks, _rejected = read_car_parks(SHIPPED.car_parks)
    for car_park in car_parks:
        events.reference(CAR_PARKS_TOPIC, car_park["car_park_id"], car_park)
    events.flush()


def air_event(sensor: str, minute: int, values: tuple[float, ...]) -> dict[str, Any]:
    names = ("ozone", "particulate_matter", "carbon_monoxide", "sulfure_dioxide")
    return {
        "domain": "air",
        "sensor_id": sensor,
        "event_time": at(minute),
        **dict(zip((*names, "nitrogen_dioxide"), values, strict=True)),
    }


def parking_event(car_park: str, minute: int, vehicles: int, spaces: int) -> dict[str, Any]:
    return {
        "domain": "parking",
        "car_park_id": car_park,
        "event_time": at(minute),
        "vehicle_count": vehicles,
        "total_spaces": spaces,
    }


def mqtt_config(path: Path, port: int, client_id: str) -> None:
    path.write_text(
        f"""
[mqtt]
host = "127.0.0.1"
port = {port}
client_id = "{client_id}"
status_interval_s = 0.3
join_timeout_s = 2
subscriptions = [{{ filter = "v1.1/+/Observations", format = "sensorthings" }}]

[[datastreams]]
id = "air-1"
domain = "air"
sensor = "190744"
components = [
  "ozone", "particulate_matter", "carbon_monoxide", "sulfure_dioxide", "nitrogen_dioxide", ""
]
[datastreams.units]
ozone = "GQ"
particulate_matter = "GQ"
carbon_monoxide = "GP"
sulfure_dioxide = "GQ"
nitrogen_dioxide = "GQ"

[[datastreams]]
id = "park-1"
domain = "parking"
sensor = "MAGASIN"
result = {{ occupied = "vehicle_count", capacity = "total_spaces" }}
""",
        encoding="utf-8",
    )


def multi(ds: str) -> str:
    return f"v1.1/MultiDatastreams({ds})/Observations"


def test_air_and_parking_ingest_to_clickhouse_match_the_recount(
    ingest: tuple[Settings, httpx.Client],  # noqa: F811
    broker: Broker,  # noqa: F811
    tmp_path: Path,
) -> None:
    settings, client = ingest
    publish_car_parks(settings)
    air: list[AirRow] = []
    parking: list[ParkingRow] = []
    rejects: list[str] = []

    # --- HTTP: canonical events ---------------------------------------------------------
    air_events = [
        air_event("158895", 2, (40.0, 55.0, 30.5, 20.0, 100.0)),
        air_event("158895", 7, (42.0, 51.0, 31.0, 22.0, 90.0)),
        air_event("187509", 7, (10.0, 20.0, 30.0, 40.0, 50.0)),
        air_event("187509", 21, (60.0, 70.0, 80.0, 90.0, 100.0)),
    ]
    parking_events = [
        parking_event("NORREPORT", 3, 40, 65),
        parking_event("NORREPORT", 9, 44, 65),
        parking_event("BRUUNS", 4, 500, 953),
        parking_event("BRUUNS", 18, 520, 953),
    ]
    answer = client.post("/v1/events", json=air_events + parking_events)
    assert answer.status_code == 202 and answer.json()["accepted"] == 8, answer.text
    retry = client.post("/v1/events", json=air_events[:1])  # a client retry: counted once
    assert retry.json()["items"][0]["event_id"] == "air:158895:1481108520000"
    for e in air_events:
        values = tuple(
            float(e[k])
            for k in (
                "ozone",
                "particulate_matter",
                "carbon_monoxide",
                "sulfure_dioxide",
                "nitrogen_dioxide",
            )
        )
        air.append(AirRow(e["sensor_id"], iso_ms(e["event_time"]), values))
    air.append(air[0])  # the retry: a duplicate to the processor and the recount alike
    for e in parking_events:
        parking.append(
            ParkingRow(
                e["car_park_id"], iso_ms(e["event_time"]), e["vehicle_count"], e["total_spaces"]
            )
        )

    bad = [
        {**air_events[0], "ozone": float("nan")},
        {**air_events[0], "nitrogen_dioxide": -4.0},
        {**air_events[0], "event_time": "2099-01-01T00:00:00Z"},
        {**parking_events[0], "vehicle_count": 66},
        {**parking_events[0], "total_spaces": -1},
        {**parking_events[0], "event_time": "2099-01-01T00:00:00Z"},
    ]
    answer = client.post(
        "/v1/events", content=json.dumps(bad), headers={"Content-Type": "application/json"}
    )
    got = [i["reason"] for i in answer.json()["items"]]
    assert got == ["invalid_event", "invalid_event", "future_timestamp"] * 2
    rejects += got

    # --- HTTP: NGSI-LD, the published examples ------------------------------------------
    aqo = entity("AirQualityObserved-normalized.jsonld")  # -> 195041 via refPointOfInterest
    aqo.update(
        dateObserved={"type": "Property", "value": "2016-12-07T11:00:00Z/2016-12-07T11:12:00Z"},
        O3={"type": "Property", "value": 115, "unitCode": "GQ"},  # -> 61
        PM10={"type": "Property", "value": 60, "unitCode": "GQ"},  # -> 53
        CO={"type": "Property", "value": 0.5, "unitCode": "GP"},  # -> 5
    )  # SO2 11 GQ -> 6, NO2 69 GQ -> 34
    aqo_kv = entity("AirQualityObserved-keyvalues.jsonld")
    aqo_kv.update(
        id="urn:ngsi-ld:AirQualityObserved:aarhus:195552",
        refPointOfInterest="urn:ngsi-ld:PointOfInterest:somewhere-else",
        dateObserved="2016-12-07T11:16:00Z",
        O3=115,
        PM10=60,
    )  # ug/m3 by the mapping: CO 500 -> 5, the others as above
    offstreet = entity("OffStreetParking-normalized.jsonld")  # -> SKOLEBAKKEN, 282 of 414
    offstreet["observationDateTime"] = {"type": "Property", "value": at(11)}
    offstreet_kv = entity("OffStreetParking-keyvalues.jsonld")
    del offstreet_kv["occupiedSpotNumber"]
    offstreet_kv.update(
        id="urn:ngsi-ld:OffStreetParking:aarhus:SALLING",
        observationDateTime=at(20),
        availableSpotNumber=100,
        totalSpotNumber=700,
    )  # 600 of 700
    spot = entity("ParkingSpot-normalized.jsonld")  # free -> 0 of 1, district unknown
    spot["status"] = {**spot["status"], "observedAt": at(14)}
    # names through a custom @context, and as full IRIs: the same Smart Data Model terms
    sdm = "https://smartdatamodels.org/dataModel.Parking/"
    custom = {
        "id": "urn:ngsi-ld:OffStreetParking:aarhus:KALKVAERKSVEJ",
        "type": "OffStreetParking",
        "taken": {"type": "Property", "value": 150},
        sdm + "totalSpotNumber": {"type": "Property", "value": 210},
        "observationDateTime": {"type": "Property", "value": at(13)},
        "@context": [
            {"taken": sdm + "occupiedSpotNumber"},
            "https://raw.githubusercontent.com/smart-data-models/dataModel.Parking/master/context.jsonld",
            "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld",
        ],
    }
    published = [aqo, aqo_kv, offstreet, offstreet_kv, spot, custom]
    answer = client.post(
        "/ngsi-ld/v1/notify",
        content=json.dumps(notification(*published)),
        headers={"Content-Type": "application/ld+json"},
    )
    assert answer.status_code == 202 and answer.json()["accepted"] == 6, answer.text
    air += [
        AirRow("195041", iso_ms(at(12)), (61.0, 53.0, 5.0, 6.0, 34.0)),
        AirRow("195552", iso_ms(at(16)), (61.0, 53.0, 5.0, 6.0, 34.0)),
    ]
    parking += [
        ParkingRow("SKOLEBAKKEN", iso_ms(at(11)), 282, 414),
        ParkingRow("SALLING", iso_ms(at(20)), 600, 700),
        ParkingRow("santander:daoiz_velarde_1_5:3", iso_ms(at(14)), 0, 1),
        ParkingRow("KALKVAERKSVEJ", iso_ms(at(13)), 150, 210),
    ]
    as_published = [
        entity("AirQualityObserved-normalized.jsonld"),  # CO 500 mg/m3: off the AQI table
        entity("AirQualityObserved-keyvalues.jsonld"),  # no O3, no PM10
        {**aqo, "NO2": {"type": "Property", "value": 69, "unitCode": "CEL"}},
        {**offstreet, "occupiedSpotNumber": {"type": "Property", "value": 415}},
        {**spot, "status": {"type": "Property", "value": "closed", "observedAt": at(15)}},
        {**offstreet, "type": "BikeHireDockingStation"},
        {**custom, "@context": ["https://example.org/private-context.jsonld"]},  # not fetched
    ]
    answer = client.post("/ngsi-ld/v1/notify", json=notification(*as_published))
    got = [i["reason"] for i in answer.json()["items"]]
    assert got == ["invalid_event"] * 2 + ["wrong_unit"] + ["invalid_event"] * 2 + [
        "unknown_entity",
        "unknown_context",
    ]
    rejects += got

    # --- MQTT: a MultiDatastream (air) and an object Datastream (parking) ---------------
    client_id = f"citystream-test-{uuid.uuid4().hex[:8]}"
    config = tmp_path / "ingest.toml"
    mqtt_config(config, broker.port, client_id)
    status_topic = f"citystream/ingest/{client_id}/status"
    sensor = Client(broker.port, f"sensor-{client_id}")
    sensor.watch(status_topic)
    second = settings.model_copy(update={"ingest_metrics_port": 0})  # HTTP has that port
    process = start_command(second, "ingest-mqtt", "ingest", "mqtt", "--config", str(config))
    try:
        sensor.wait_status(status_topic, state="online")
        # O3 115 ug/m3 -> 61, PM10 60 -> 53, CO 0.5 mg/m3 -> 5, SO2 11 -> 6, NO2 69 -> 34
        sensor.publish(
            multi("air-1"), {"phenomenonTime": at(5), "result": [115, 60, 0.5, 11, 69, 3]}
        )
        # O3 200 ug/m3 -> 101.9 ppb -> 0.101 ppm: 151 + 49/19 * 0.015 = 189.7 -> 190
        # PM10 160 -> 101 + 49/99 * 5 = 103.5 -> 103 ... rounded half up: 103.47 -> 103
        # CO 1 mg/m3 -> 0.873 ppm -> 0.8: 50/4.4 * 0.8 = 9.09 -> 9
        # SO2 100 ug/m3 -> 38.16 ppb -> 38: 51 + 49/39 * 2 = 53.5 -> 54 (53.51)
        # NO2 200 ug/m3 -> 106.3 ppb -> 106: 101 + 49/259 * 5 = 101.9 -> 102
        sensor.publish(
            multi("air-1"), {"phenomenonTime": at(25), "result": [200, 160, 1, 100, 200, 0]}
        )
        air += [
            AirRow("190744", iso_ms(at(5)), (61.0, 53.0, 5.0, 6.0, 34.0)),
            AirRow("190744", iso_ms(at(25)), (190.0, 103.0, 9.0, 54.0, 102.0)),
        ]
        park = "v1.1/Datastreams(park-1)/Observations"
        sensor.publish(
            park, {"phenomenonTime": at(6), "result": {"occupied": 120, "capacity": 400}}
        )
        sensor.publish(
            park, {"phenomenonTime": at(8), "result": {"occupied": 130, "capacity": 400}}
        )
        parking += [
            ParkingRow("MAGASIN", iso_ms(at(6)), 120, 400),
            ParkingRow("MAGASIN", iso_ms(at(8)), 130, 400),
        ]
        mqtt_bad: list[tuple[str, object, str]] = [
            (multi("air-1"), {"phenomenonTime": at(9), "result": [1, 2, 3]}, "invalid_event"),
            (
                multi("air-1"),
                b'{"phenomenonTime": "2016-12-07T11:09:00Z", "result": [1, 2, NaN, 4, 5, 6]}',
                "invalid_event",
            ),
            (multi("air-9"), {"phenomenonTime": at(9), "result": [1] * 6}, "unknown_datastream"),
            (
                park,
                {"phenomenonTime": at(9), "result": {"occupied": -1, "capacity": 400}},
                "invalid_event",
            ),
            (
                park,
                {
                    "phenomenonTime": "2099-01-01T00:00:00Z",
                    "result": {"occupied": 1, "capacity": 4},
                },
                "future_timestamp",
            ),
        ]
        for where, body, _reason in mqtt_bad:
            sensor.publish(where, body)
        rejects += [reason for _w, _b, reason in mqtt_bad]
        sensor.wait_status(status_topic, accepted=4, rejected=len(mqtt_bad), timeout=60)
    finally:
        sensor.close()
        assert stop_command(process) == 0, log_tail(settings, "ingest-mqtt")

    # --- the pipeline: KPIs against the recount ------------------------------------------
    pipeline = Pipeline(settings)
    try:
        pipeline.start()
        stats = wait_processed(pipeline, {"air": len(air), "parking": len(parking)}, 300)
        assert stats["air"]["duplicates"] == 1 and stats["air"]["late"] == 0
        assert stats["parking"]["duplicates"] == 0 and stats["parking"]["late"] == 0
        args = (settings.partitions, settings.window_minutes, settings.grace_minutes)
        segments = {s: str(m["POINT_1_POSTAL_CODE"]) for s, m in read_metadata(METADATA).items()}
        expected_air = aggregate_air(air, segments, *args)
        result = compare(expected_air, stored_kpis(settings, "air."))
        assert result.ok and result.matched == len(expected_air), result.summary()
        districts = read_car_park_districts(SHIPPED.car_parks)
        expected_parking = aggregate_parking(parking, districts, *args)
        assert ("parking.occupancy_pct", "district", "unknown") in {k[:3] for k in expected_parking}
        result = compare(expected_parking, stored_kpis(settings, "parking."))
        assert result.ok and result.matched == len(expected_parking), result.summary()
    finally:
        pipeline.stop()

    # --- the Avro records and the dead letters ------------------------------------------
    air_records = read_topic(settings, "city.air.v1")
    assert sorted(
        (r["sensor_id"], int(r["event_time"].timestamp() * 1000)) for r in air_records
    ) == (sorted((r.sensor, r.ts) for r in air))
    assert {r["source"] for r in air_records} == {"http-ingest", "mqtt-ingest"}
    madrid = next(r for r in air_records if r["sensor_id"] == "195041")
    assert (madrid["latitude"], madrid["longitude"]) == (40.423852777777775, -3.712247222222222)
    parking_records = read_topic(settings, "city.parking.v1")
    assert sorted(
        (r["car_park_id"], r["vehicle_count"], r["total_spaces"]) for r in parking_records
    ) == sorted((r.car_park, r.vehicles, r.spaces) for r in parking)
    letters = read_topic(settings, "city.dlq.v1")
    assert sorted(d["reason"] for d in letters) == sorted(rejects)
    assert {d["component"] for d in letters} == {"http-ingest", "mqtt-ingest"}
