"""The data contracts in the schemas: every field of every schema is classified, has a purpose
and a retention, and a schema that lacks any of it is refused, naming the field."""

from __future__ import annotations

import copy
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import fastavro
import pytest

from schemas.catalog import AVRO_DIR, load_schema
from schemas.contracts import (
    ContractError,
    contract,
    load_contracts,
    parse_contract,
    parse_retention,
    retention_ms,
)


@pytest.mark.parametrize("path", sorted(AVRO_DIR.glob("*.avsc")), ids=lambda p: p.name)
def test_every_field_of_every_schema_is_classified(path: Path) -> None:
    schema = load_schema(path.name)
    found = parse_contract(path.name, schema)
    assert len(found.fields) >= len(schema["fields"])
    fastavro.parse_schema(schema)  # the attributes do not disturb Avro


def test_load_contracts_reads_the_shipped_schemas() -> None:
    contracts = load_contracts()
    assert set(contracts) == {p.name for p in AVRO_DIR.glob("*.avsc")}
    request = contracts["service_request_event.avsc"]
    assert request.field("request_id").personal
    assert not contracts["kpi_record.avsc"].personal_fields
    assert contract("kpi_record.avsc").retention is None  # published KPIs are kept
    nested = contracts["window_partial.avsc"].field("windows.groups.entity_id")
    assert nested.classification == "none"


def _copy_dir(tmp_path: Path, change: str, mutate: Any) -> Path:
    """A temporary schema directory: the shipped schemas with ``change`` mutated."""
    for path in AVRO_DIR.glob("*.avsc"):
        schema = json.loads(path.read_text())
        if path.name == change:
            mutate(schema)
        (tmp_path / path.name).write_text(json.dumps(schema))
    return tmp_path


def _field(schema: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in schema["fields"] if f["name"] == name)


def test_an_untagged_field_is_refused_by_name(tmp_path: Path) -> None:
    def add_untagged(schema: dict[str, Any]) -> None:
        schema["fields"].append({"name": "address", "type": ["null", "string"], "default": None})

    with pytest.raises(ContractError, match=r"service_request_event\.avsc: field address"):
        load_contracts(_copy_dir(tmp_path, "service_request_event.avsc", add_untagged))


def test_an_untagged_nested_field_is_refused(tmp_path: Path) -> None:
    def strip(schema: dict[str, Any]) -> None:
        groups = _field(schema, "windows")["type"]["items"]["fields"][2]["type"]["items"]
        del groups["fields"][1]["citystream.classification"]

    with pytest.raises(ContractError, match=r"field windows\.groups\.entity_id"):
        load_contracts(_copy_dir(tmp_path, "window_partial.avsc", strip))


@pytest.mark.parametrize(
    ("attribute", "value", "message"),
    [
        ("citystream.classification", "secret", "classification"),
        ("citystream.purpose", "marketing", "purpose"),
        ("confluent:tags", [], "confluent:tags"),  # personal without the PII tag
        ("citystream.allowed", None, "must say where it may go"),
        ("citystream.allowed", ["everywhere"], "unknown destinations"),
        ("citystream.retention", "P1Y", "not an ISO 8601 duration"),
        ("citystream.retention", "P90D", "outlives its record"),
        ("citystream.protection", "hidden", "protection"),
    ],
)
def test_an_inconsistent_field_contract_is_refused(
    attribute: str, value: Any, message: str
) -> None:
    schema = copy.deepcopy(load_schema("service_request_event.avsc"))
    field = _field(schema, "request_id")
    if value is None:
        del field[attribute]
    else:
        field[attribute] = value
    with pytest.raises(ContractError, match=message):
        parse_contract("service_request_event.avsc", schema)


def test_a_pii_tag_on_a_non_personal_field_is_refused() -> None:
    schema = copy.deepcopy(load_schema("traffic_reading.avsc"))
    _field(schema, "segment_id")["confluent:tags"] = ["PII"]
    with pytest.raises(ContractError, match="segment_id"):
        parse_contract("traffic_reading.avsc", schema)


def test_a_record_without_purpose_or_retention_is_refused() -> None:
    schema = copy.deepcopy(load_schema("traffic_reading.avsc"))
    del schema["citystream.purpose"], schema["citystream.retention"]
    with pytest.raises(ContractError, match=r"no citystream\.purpose.*no citystream\.retention"):
        parse_contract("traffic_reading.avsc", schema)


def test_a_field_may_shorten_the_retention_of_its_record() -> None:
    schema = copy.deepcopy(load_schema("service_request_event.avsc"))
    _field(schema, "request_id")["citystream.retention"] = "P2D"
    found = parse_contract("service_request_event.avsc", schema)
    assert found.field("request_id").retention == timedelta(days=2)
    assert found.field("status").retention == timedelta(days=35)
    assert found.storage_retention == timedelta(days=2)


@pytest.mark.parametrize(
    ("text", "span"),
    [
        ("P35D", timedelta(days=35)),
        ("P2W", timedelta(weeks=2)),
        ("PT12H", timedelta(hours=12)),
        ("P1DT2H3M4S", timedelta(days=1, hours=2, minutes=3, seconds=4)),
        ("forever", None),
    ],
)
def test_retention_durations(text: str, span: timedelta | None) -> None:
    assert parse_retention(text) == span


@pytest.mark.parametrize("text", ["P", "PT", "P1M", "P1Y", "30 days", "P0D", "-P1D"])
def test_bad_retention_durations_are_refused(text: str) -> None:
    with pytest.raises(ContractError):
        parse_retention(text)


def test_retention_ms_for_kafka() -> None:
    assert retention_ms(None) == -1
    assert retention_ms(timedelta(days=1)) == 86_400_000
