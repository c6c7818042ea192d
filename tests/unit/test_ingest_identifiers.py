"""Declared identifiers at the MQTT/HTTP ingest edge (#16), without a broker: a mapping's
`[privacy] identifiers` are pseudonymised before anything is published or dead-lettered,
an opted-out one is dropped (OptedOut), and a dead letter carries pseudonyms only."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from connectors.publishing import Rejected
from connectors.sources.ingest_common import (
    Accepted,
    Identifiers,
    IngestConfig,
    OptedOut,
    minimised,
    validate_items,
)
from connectors.sources.mqtt import Message, MqttIngest
from core.privacy.edge import Edge
from core.privacy.minimise import DROPPED, minimal_payload
from core.privacy.optout import OptOut, OptOuts
from core.privacy.pseudonym import Pseudonymiser, parse_keys
from core.privacy.subject_keys import SubjectKeyStore

KEYS = parse_keys("k2=" + "n" * 32 + ",k1=" + "o" * 32)
MAC = "a4:c1:38:0f:22:9e"  # a resident's own air sensor, its MAC as the sensor id
OTHER = "a4:c1:38:77:10:01"
NOW = 1_700_000_000.0
FUTURE_MS = 300_000
AIR = {"ozone": 40, "particulate_matter": 55, "carbon_monoxide": 30.5,
       "sulfure_dioxide": 20, "nitrogen_dioxide": 100}  # fmt: skip


def edge(tmp_path: Path, *opted_out: tuple[str, str], keys: Any = KEYS) -> Edge:
    """Real pseudonyms and a registry of opt-outs (recorded under ``keys``)."""
    recorder = Pseudonymiser(keys)
    entries = [OptOut(f, recorder.every(f, v), 0) for f, v in opted_out]
    return Edge(Pseudonymiser(KEYS), SubjectKeyStore(tmp_path / "keys"), OptOuts.of(entries))


def config(*identifiers: str) -> IngestConfig:
    return IngestConfig.model_validate(
        {
            "privacy": {"identifiers": list(identifiers)},
            "datastreams": [
                {"id": "7", "domain": "air", "sensor": MAC, "components": list(AIR)},
                {"id": "8", "domain": "traffic", "sensor": MAC, "field": "vehicle_count"},
                {"id": "9", "domain": "traffic", "sensor": MAC, "field": "avg_speed_kmh"},
            ],
        }
    )


def air_event(sensor: str, minute: int = 1, **extra: Any) -> dict[str, Any]:
    return {"domain": "air", "sensor_id": sensor, "event_time": f"2023-11-14T20:{minute:02}:00Z",
            **AIR, **extra}  # fmt: skip


def mqtt(tmp_path: Path, *opted_out: tuple[str, str]) -> MqttIngest:
    ingest = MqttIngest(config("sensor_id", "segment_id", "reporter"), FUTURE_MS)
    ingest.identifiers.edge = edge(tmp_path, *opted_out)
    return ingest


def observation(ds: str, result: Any, minute: int = 1, **extra: Any) -> Message:
    body = {"phenomenonTime": f"2023-11-14T20:{minute:02}:00Z", "result": result, **extra}
    kind = "MultiDatastreams" if ds == "7" else "Datastreams"
    return Message(f"v1.1/{kind}({ds})/Observations", json.dumps(body).encode(), 1, 1)


def test_a_declared_sensor_is_published_as_its_pseudonym_same_value_same_pseudonym(
    tmp_path: Path,
) -> None:
    ingest = mqtt(tmp_path)
    outcomes = []
    for minute in (1, 2):
        result = ingest.handle(observation("7", list(AIR.values()), minute), NOW)
        assert result is not None
        outcomes += result[0]
    first, second = outcomes
    assert isinstance(first, Accepted) and isinstance(second, Accepted)
    sensors = {o.reading.record["sensor_id"] for o in (first, second)}  # type: ignore[union-attr]
    assert sensors == {Pseudonymiser(KEYS).pseudonym("sensor_id", MAC)}
    assert sensors.pop().startswith("k2:")  # the active key, its id carried for rotation
    assert MAC not in first.event_id and MAC not in repr(first)


def test_an_opted_out_sensor_is_dropped_under_an_older_key_too(tmp_path: Path) -> None:
    older = parse_keys("k1=" + "o" * 32)  # recorded before k2 was added
    ingest = MqttIngest(config("sensor_id"), FUTURE_MS)
    ingest.identifiers.edge = edge(tmp_path, ("sensor_id", MAC), keys=older)
    result = ingest.handle(observation("7", list(AIR.values())), NOW)
    assert result is not None
    (outcome,), tokens = result
    assert isinstance(outcome, OptedOut) and isinstance(outcome.answer, Accepted)
    assert tokens == [(1, 1)]  # settled: the broker may forget it


def test_joined_scalars_expire_without_naming_the_raw_sensor(tmp_path: Path) -> None:
    ingest = mqtt(tmp_path)
    assert ingest.handle(observation("8", 12), NOW) == ([], [])
    ((rejected, _tokens),) = ingest.expired(NOW + 120)
    assert isinstance(rejected, Rejected) and rejected.reason == "incomplete_observation"
    assert MAC not in rejected.detail
    assert Pseudonymiser(KEYS).pseudonym("segment_id", MAC) in rejected.detail


def test_an_opted_out_incomplete_observation_is_not_dead_lettered(tmp_path: Path) -> None:
    ingest = mqtt(tmp_path, ("segment_id", MAC))
    assert ingest.handle(observation("8", 12), NOW) == ([], [])
    ((outcome, _tokens),) = ingest.expired(NOW + 120)
    assert isinstance(outcome, OptedOut)


def test_a_reporter_in_parameters_or_an_event_serves_the_opt_out_and_is_not_published(
    tmp_path: Path,
) -> None:
    ingest = mqtt(tmp_path, ("reporter", "jane@example.org"))
    dropped = ingest.handle(
        observation("7", list(AIR.values()), parameters={"reporter": "jane@example.org"}), NOW
    )
    assert dropped is not None and isinstance(dropped[0][0], OptedOut)
    items: list[tuple[Any, bytes | None]] = [(air_event(OTHER, reporter="sam@example.org"), None),
             (air_event(OTHER, 2, reporter="jane@example.org"), None)]  # fmt: skip
    kept, opted = validate_items(items, "test", int(NOW * 1000), FUTURE_MS, ingest.identifiers)
    assert isinstance(kept, Accepted) and isinstance(opted, OptedOut)
    assert "reporter" not in kept.reading.record  # type: ignore[union-attr]
    assert "sam@example.org" not in repr(kept)


def test_an_opted_out_invalid_event_is_dropped_not_dead_lettered(tmp_path: Path) -> None:
    ids = Identifiers(["sensor_id"], edge(tmp_path, ("sensor_id", MAC)))
    bad = air_event(MAC, ozone=-1)
    (outcome,) = validate_items([(bad, None)], "t", int(NOW * 1000), FUTURE_MS, ids)
    assert isinstance(outcome, OptedOut) and isinstance(outcome.answer, Rejected)


def test_a_dead_letter_carries_pseudonyms_of_declared_identifiers_only(tmp_path: Path) -> None:
    ids = Identifiers(["sensor_id", "reporter"], edge(tmp_path))
    bad = air_event(MAC, ozone=-1, reporter="jane@example.org", note="call 617-555-0100")
    (outcome,) = validate_items([(bad, None)], "t", int(NOW * 1000), FUTURE_MS, ids)
    assert isinstance(outcome, Rejected)
    letter = minimised(outcome, ids)
    assert isinstance(letter.raw, bytes)
    assert MAC.encode() not in letter.raw and b"jane" not in letter.raw
    shape = json.loads(letter.raw)
    pseudonyms = Pseudonymiser(KEYS)
    assert shape["sensor_id"] == pseudonyms.pseudonym("sensor_id", MAC)
    assert shape["reporter"] == pseudonyms.pseudonym("reporter", "jane@example.org")
    assert shape["note"] == DROPPED and shape["ozone"] == -1  # undeclared: minimised as ever
    undeclared = minimised(outcome)  # the same letter without the declaration keeps the
    assert MAC.encode() in undeclared.raw  # canonical sensor field: the declaration matters


def test_minimal_payload_pseudonymises_an_ngsi_ld_attribute_value_and_drops_odd_shapes() -> None:
    def pseudonym(name: str, value: object) -> str | None:
        return f"p({name}={value})" if isinstance(value, str | int) else None

    raw = json.dumps(
        {
            "plate": {"type": "Property", "value": "AB-123-CD"},
            "reporter": ["x"],
            "refDevice": {"type": "Relationship", "object": "urn:d:1"},
        }
    )
    shape = json.loads(
        minimal_payload(
            raw, {"type"}, identifiers={"plate", "reporter", "refDevice"}, pseudonymise=pseudonym
        )
    )
    assert shape["plate"] == {"type": "Property", "value": "p(plate=AB-123-CD)"}
    assert shape["refDevice"]["object"] == "p(refDevice=urn:d:1)"
    assert shape["reporter"] == DROPPED  # a list is no identifier: nothing of it kept


def test_declared_identifiers_need_the_edge_and_sane_names() -> None:
    ingest = MqttIngest(config("sensor_id"), FUTURE_MS)
    with pytest.raises(RuntimeError, match="privacy edge"):
        ingest.handle(observation("7", list(AIR.values())), NOW)
    for bad in (["sensor_id", "sensor_id"], ["event_time"], ["not a name"]):
        with pytest.raises(ValueError, match="identifiers"):
            IngestConfig.model_validate({"privacy": {"identifiers": bad}})
    plain = MqttIngest(IngestConfig.model_validate({}), FUTURE_MS)  # nothing declared:
    assert plain.identifiers.fields == frozenset()  # no edge is needed


def test_the_ingest_page_example_declares_identifiers_a_mapping_file_accepts() -> None:
    page = (Path(__file__).resolve().parents[2] / "docs/ingest.md").read_text(encoding="utf-8")
    block = page.split("<!-- ingest-privacy-example -->\n```toml\n", 1)[1].split("```", 1)[0]
    config = IngestConfig.model_validate(tomllib.loads(block))
    assert config.privacy.identifiers == ["sensor_id", "reporter"]


def onem2m_notification(minute: int) -> dict[str, Any]:
    cin = {"con": json.dumps(AIR), "ct": f"20231114T20{minute:02}00"}
    return {"m2m:sgn": {"sur": "/cse-in/air-1/sub", "nev": {"rep": {"m2m:cin": cin}}}}


def test_onem2m_notifications_pseudonymise_a_declared_sensor_and_drop_an_opted_out_one(
    tmp_path: Path,
) -> None:
    from connectors.sources.onem2m import load, notification_outcome

    mapping = load({"containers": {"air-1": {"domain": "air", "sensor": MAC,
                                               "members": {k: k for k in AIR}}}})  # fmt: skip
    declared = Identifiers(["sensor_id"], edge(tmp_path))
    now_ms = int(NOW * 1000)
    outcome = notification_outcome(
        mapping, onem2m_notification(1), "onem2m:t", now_ms, FUTURE_MS, "", declared
    )
    assert isinstance(outcome, Accepted)
    pseudonym = Pseudonymiser(KEYS).pseudonym("sensor_id", MAC)
    assert MAC not in repr(outcome) and pseudonym in repr(outcome)

    opted = Identifiers(["sensor_id"], edge(tmp_path, ("sensor_id", MAC)))
    dropped = notification_outcome(
        mapping, onem2m_notification(2), "onem2m:t", now_ms, FUTURE_MS, "", opted
    )
    assert isinstance(dropped, OptedOut) and isinstance(dropped.answer, Accepted)
    undeclared = notification_outcome(mapping, onem2m_notification(3), "onem2m:t", now_ms,
                                      FUTURE_MS)  # fmt: skip
    assert isinstance(undeclared, Accepted) and MAC in repr(undeclared)
