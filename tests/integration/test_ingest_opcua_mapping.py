"""The OPC UA mapping on its own (no server needed): data changes as a server sends them
(asyncua DataValues) through :class:`OpcUaIngest`, and the shipped example mapping."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from asyncua import ua

from connectors.publishing import Rejected
from connectors.sources.ingest_common import Accepted, DomainRecord
from connectors.sources.opcua import OpcUaConfig, OpcUaIngest, change_of, load_config

REPO = Path(__file__).resolve().parents[2]
WHEN = datetime(2024, 3, 4, 6, 0, tzinfo=UTC)
NOW = datetime(2024, 3, 4, 7, 0, tzinfo=UTC).timestamp()


def config() -> OpcUaConfig:
    return OpcUaConfig.model_validate(
        {
            "opcua": {"security": "None"},
            "nodes": [
                {"node_id": "ns=2;s=Heat", "domain": "energy", "sensor": "dh-1", "field": "kwh",
                 "unit": "MWh", "constants": {"district": "8200"}},
                {"node_id": "ns=2;s=Occ", "domain": "parking", "sensor": "NORREPORT",
                 "field": "vehicle_count"},
                {"node_id": "ns=2;s=Cap", "domain": "parking", "sensor": "NORREPORT",
                 "field": "total_spaces"},
            ],
        }
    )  # fmt: skip


def change(node: str, value: object, variant: ua.VariantType, status: int = 0, when=WHEN):  # type: ignore[no-untyped-def]
    data = ua.DataValue(ua.Variant(value, variant), StatusCode=ua.StatusCode(status))
    data.SourceTimestamp = when
    return change_of(node, data)


def test_an_energy_reading_in_mwh_becomes_kwh_with_the_source_time_as_its_id() -> None:
    ingest = OpcUaIngest(config(), "opc.tcp://plant", 300_000)
    [outcome] = ingest.handle(change("ns=2;s=Heat", 1.5, ua.VariantType.Float), NOW) or []
    assert isinstance(outcome, Accepted) and isinstance(outcome.reading, DomainRecord)
    ms = int(WHEN.timestamp() * 1000)
    assert outcome.event_id == f"energy:dh-1:{ms}"
    assert outcome.reading.record["kwh"] == 1500.0
    assert outcome.reading.record["district"] == "8200"
    assert outcome.reading.origin == "opc.tcp://plant".join(["opcua:", "#ns=2;s=Heat"])
    # the same node and source time again (a new subscription's initial value): dropped
    assert ingest.handle(change("ns=2;s=Heat", 1.5, ua.VariantType.Float), NOW) is None


def test_two_nodes_of_one_car_park_are_joined_per_source_time() -> None:
    ingest = OpcUaIngest(config(), "opc.tcp://plant", 300_000)
    assert ingest.handle(change("ns=2;s=Occ", 40, ua.VariantType.Int32), NOW) == []
    [outcome] = ingest.handle(change("ns=2;s=Cap", 65, ua.VariantType.Int32), NOW) or []
    assert isinstance(outcome, Accepted) and isinstance(outcome.reading, DomainRecord)
    assert outcome.reading.record["vehicle_count"] == 40
    assert outcome.reading.record["total_spaces"] == 65


@pytest.mark.parametrize(
    ("node", "value", "variant", "status", "when", "reason"),
    [
        ("ns=2;s=Heat", 1.0, ua.VariantType.Double, ua.StatusCodes.BadSensorFailure, WHEN,
         "bad_status"),
        ("ns=2;s=Heat", "n/a", ua.VariantType.String, 0, WHEN, "invalid_event"),
        ("ns=2;s=Heat", True, ua.VariantType.Boolean, 0, WHEN, "invalid_event"),
        ("ns=2;s=Heat", -1.0, ua.VariantType.Double, 0, WHEN, "invalid_event"),
        ("ns=2;s=Heat", float("nan"), ua.VariantType.Double, 0, WHEN, "invalid_event"),
        ("ns=2;s=Heat", 1.0, ua.VariantType.Double, 0, None, "invalid_timestamp"),
        ("ns=2;s=Heat", 1.0, ua.VariantType.Double, 0, datetime(2099, 1, 1, tzinfo=UTC),
         "future_timestamp"),
        ("ns=2;s=Other", 1.0, ua.VariantType.Double, 0, WHEN, "unknown_node"),
        ("ns=2;s=Occ", 500, ua.VariantType.Int32, 0, WHEN, "incomplete_or_invalid"),
    ],
)  # fmt: skip
def test_bad_values_are_rejected_with_their_reason(  # type: ignore[no-untyped-def]
    node, value, variant, status, when, reason
) -> None:
    ingest = OpcUaIngest(config(), "opc.tcp://plant", 300_000)
    outcomes = ingest.handle(change(node, value, variant, status, when), NOW) or []
    if reason == "incomplete_or_invalid":  # 500 vehicles in 65 spaces, once joined
        outcomes = ingest.handle(change("ns=2;s=Cap", 65, ua.VariantType.Int32, 0, when), NOW)
        reason = "invalid_event"
    [outcome] = outcomes or []
    assert isinstance(outcome, Rejected), outcome
    assert outcome.reason == reason, outcome.detail
    assert outcome.raw.startswith(b'{"domain":' if node == "ns=2;s=Occ" else b'{"node_id":')


def test_the_example_mapping_loads() -> None:
    example = load_config(REPO / "infra/examples/opcua.toml")
    assert {n.domain for n in example.nodes} == {"energy", "parking"}
    assert example.opcua.security == "Basic256Sha256_SignAndEncrypt"


@pytest.mark.parametrize(
    ("node", "message"),
    [
        ({"domain": "energy", "field": "kwh", "unit": "kWh"}, "constants.district"),
        ({"domain": "energy", "field": "kwh", "unit": "degC", "constants": {"district": "1"}},
         "not an energy unit"),
        ({"domain": "weather", "field": "t"}, "unknown domain"),
        ({"domain": "traffic", "field": "avg_speed_kmh", "unit": "furlong"}, "speed unit"),
    ],
)  # fmt: skip
def test_a_bad_mapping_is_refused_naming_the_node(node: dict[str, object], message: str) -> None:
    entry = {"node_id": "ns=2;s=X", "sensor": "s", **node}
    with pytest.raises(ValueError, match=message):
        OpcUaConfig.model_validate({"opcua": {"security": "None"}, "nodes": [entry]})
