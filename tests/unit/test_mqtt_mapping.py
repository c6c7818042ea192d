"""SensorThings / plain JSON over MQTT -> canonical readings, without a broker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from connectors.publishing import Rejected
from connectors.sources.ingest_common import Accepted, IngestConfig, load_config
from connectors.sources.mqtt import Message, MqttIngest, datastream_id

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests/fixtures/sensorthings"
EXAMPLE = REPO / "infra/examples/ingest.toml"
NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z
FUTURE_MS = 300_000


@pytest.fixture
def ingest() -> MqttIngest:
    return MqttIngest(load_config(EXAMPLE), FUTURE_MS)


def msg(topic: str, body: object, mid: int = 1) -> Message:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Message(topic, payload, mid, 1)


def observation(ds: str | int, body: object, mid: int = 1) -> Message:
    return msg(f"v1.1/Datastreams({ds})/Observations", body, mid)


def only(result: tuple[list[Accepted | Rejected], list[object]] | None) -> Accepted | Rejected:
    assert result is not None
    outcomes, _tokens = result
    assert len(outcomes) == 1
    return outcomes[0]


def fixture(name: str) -> dict[str, object]:
    result: dict[str, object] = json.loads((FIXTURES / name).read_text())
    return result


def test_datastream_id_from_topic() -> None:
    assert datastream_id("v1.1/Datastreams(42)/Observations") == "42"
    assert datastream_id("v1.0/Datastreams('abc-1')/Observations") == "abc-1"
    assert datastream_id("city/v1.1/Datastreams(7)/Observations") == "7"
    assert datastream_id("v1.1/Things(1)/Locations") is None


def test_object_result_becomes_one_reading(ingest: MqttIngest) -> None:
    out = only(ingest.handle(observation(1, fixture("observation-object.json"), mid=9), NOW))
    assert isinstance(out, Accepted)
    r = out.reading
    assert (r.segment_id, r.vehicle_count, r.avg_speed_kmh) == ("158895", 12, 48.5)
    assert r.event_time_ms == 1_406_960_100_000  # the interval's end, 2014-08-02T06:15Z
    assert out.event_id == "traffic:158895:1406960100000"
    assert r.origin == "mqtt:v1.1/Datastreams(1)/Observations"


def test_scalar_datastreams_are_joined_and_units_converted(ingest: MqttIngest) -> None:
    count = fixture("observation-scalar.json")
    speed = {**count, "result": 12.5}  # m/s in the mapping -> 45 km/h
    assert ingest.handle(observation(2, count, mid=1), NOW) == ([], [])
    outcomes, tokens = ingest.handle(observation(3, speed, mid=2), NOW) or ([], [])
    assert tokens == [(1, 1), (2, 1)]
    (out,) = outcomes
    assert isinstance(out, Accepted)
    assert (out.reading.segment_id, out.reading.vehicle_count) == ("187509", 7)
    assert out.reading.avg_speed_kmh == pytest.approx(45.0)


def test_incomplete_scalar_observation_expires_to_the_dlq(ingest: MqttIngest) -> None:
    ingest.handle(observation(2, fixture("observation-scalar.json"), mid=5), NOW)
    assert ingest.expired(NOW + 59) == []
    ((rejected, tokens),) = ingest.expired(NOW + 61)
    assert rejected.reason == "incomplete_observation"
    assert "avg_speed_kmh" in rejected.detail
    assert tokens == [(5, 1)]
    assert b'"result": 7' in (rejected.raw if isinstance(rejected.raw, bytes) else b"")


def test_conflicting_scalar_values_are_rejected(ingest: MqttIngest) -> None:
    body = fixture("observation-scalar.json")
    ingest.handle(observation(2, body, mid=1), NOW)
    out = only(ingest.handle(observation(2, {**body, "result": 8}, mid=2), NOW))
    assert isinstance(out, Rejected) and out.reason == "invalid_event"


def test_redelivery_is_dropped_once_seen(ingest: MqttIngest) -> None:
    body = fixture("observation-object.json")
    assert ingest.handle(observation(1, body, mid=1), NOW) is not None
    assert ingest.handle(observation(1, body, mid=1), NOW) is None  # QoS 1 redelivery
    assert ingest.handle(observation(1, body, mid=7), NOW) is None  # a publisher's retry
    other = {**body, "phenomenonTime": "2014-08-02T06:20:00Z"}
    assert ingest.handle(observation(1, other, mid=8), NOW) is not None


def test_dedup_memory_is_bounded() -> None:
    config = IngestConfig.model_validate({"mqtt": {"dedup_window": 2}})
    ingest = MqttIngest(config, FUTURE_MS)
    events = [
        {"domain": "traffic", "segment_id": "1", "event_time": f"2014-08-02T06:{m:02}:00Z"}
        for m in range(3)
    ]
    for e in events:
        ingest.handle(msg("citystream/events/x", e), NOW)
    assert ingest.handle(msg("citystream/events/x", events[0]), NOW) is not None  # forgotten
    assert ingest.handle(msg("citystream/events/x", events[2]), NOW) is None


GOOD = {"phenomenonTime": "2014-08-02T06:15:00Z", "result": {"vehicleCount": 3, "avgSpeed": 50}}
BAD_OBSERVATIONS = [
    ("1", b"{not json", "invalid_json"),
    ("99", GOOD, "unknown_datastream"),
    ("1", {**GOOD, "result": {"vehicleCount": 3, "avgSpeed": float("nan")}}, "invalid_event"),
    (
        "1",
        b'{"phenomenonTime": "2014-08-02T06:15:00Z", "result": {"vehicleCount": NaN, '
        b'"avgSpeed": 5}}',
        "invalid_event",
    ),
    ("1", {**GOOD, "result": {"vehicleCount": "3", "avgSpeed": 50}}, "invalid_event"),
    ("1", {**GOOD, "result": {"vehicleCount": -1, "avgSpeed": 50}}, "invalid_event"),
    ("1", {**GOOD, "result": {"vehicleCount": 3}}, "invalid_event"),
    ("1", {**GOOD, "result": 3}, "invalid_event"),
    ("1", {"result": GOOD["result"]}, "invalid_timestamp"),
    ("1", {**GOOD, "phenomenonTime": "2014-08-02T06:15:00"}, "invalid_timestamp"),
    ("1", {**GOOD, "phenomenonTime": "yesterday"}, "invalid_timestamp"),
    ("1", {**GOOD, "phenomenonTime": "2030-01-01T00:00:00Z"}, "future_timestamp"),
    ("2", {**GOOD, "result": 5, "parameters": {"unit": "degC"}}, "wrong_unit"),
    ("1", [1, 2], "invalid_event"),
]


@pytest.mark.parametrize(("ds", "body", "reason"), BAD_OBSERVATIONS)
def test_bad_observations_are_dead_lettered(
    ingest: MqttIngest, ds: str, body: object, reason: str
) -> None:
    message = observation(ds, body)
    out = only(ingest.handle(message, NOW))
    assert isinstance(out, Rejected), out
    assert out.reason == reason, out.detail
    assert out.raw == message.payload
    assert out.origin == f"mqtt:v1.1/Datastreams({ds})/Observations"


def test_plain_json_events_in_an_array_or_ndjson(ingest: MqttIngest) -> None:
    good = {
        "domain": "traffic",
        "segment_id": "158895",
        "event_time": "2014-08-02T06:15:00+02:00",
        "vehicle_count": 4,
        "avg_speed_kmh": 61.0,
    }
    bad = {**good, "vehicle_count": 2.5}
    result = ingest.handle(msg("citystream/events/a", [good, bad]), NOW)
    assert result is not None
    outcomes, tokens = result
    assert isinstance(outcomes[0], Accepted)
    assert outcomes[0].reading.event_time_ms == 1_406_952_900_000
    assert isinstance(outcomes[1], Rejected) and outcomes[1].reason == "invalid_event"
    assert outcomes[1].origin == "mqtt:citystream/events/a#1"
    assert tokens == [(1, 1)]
    ndjson = json.dumps(good).encode() + b"\n{oops\n"
    result = ingest.handle(msg("citystream/events/b", ndjson), NOW)
    assert result is not None
    assert [type(o).__name__ for o in result[0]] == ["Accepted", "Rejected"]
    assert isinstance(result[0][1], Rejected) and result[0][1].reason == "invalid_json"
    unknown = ingest.handle(msg("citystream/events/c", {**good, "domain": "noise"}), NOW)
    assert unknown is not None and isinstance(unknown[0][0], Rejected)
    assert unknown[0][0].reason == "unknown_domain"


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"domain": "noise", "field": "db"}, "unknown domain 'noise'"),
        ({"domain": "traffic", "field": "speed"}, "'speed' is not a value field"),
        (
            {"domain": "traffic", "field": "vehicle_count", "result": {"a": "vehicle_count"}},
            "exactly one of",
        ),
        ({"domain": "traffic", "field": "avg_speed_kmh", "unit": "knots"}, "unit 'knots'"),
    ],
)
def test_mapping_file_mistakes_are_named(
    tmp_path: Path, mapping: dict[str, object], message: str
) -> None:
    body = "\n".join(
        f"{k} = {json.dumps(v) if not isinstance(v, dict) else _inline(v)}"
        for k, v in mapping.items()
    )
    path = tmp_path / "bad.toml"
    path.write_text(f'[[datastreams]]\nid = "1"\nsensor = "s"\n{body}\n')
    with pytest.raises(ValueError, match=message) as err:
        load_config(path)
    assert str(path) in str(err.value)


def _inline(table: dict[str, object]) -> str:
    return "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in table.items()) + " }"


def test_duplicate_datastream_ids_are_refused(tmp_path: Path) -> None:
    row = '[[datastreams]]\nid = 5\ndomain = "traffic"\nsensor = "s"\nfield = "vehicle_count"\n'
    path = tmp_path / "dup.toml"
    path.write_text(row + row)
    with pytest.raises(ValueError, match="unique"):
        load_config(path)
