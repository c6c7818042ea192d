"""The contract checks (docs/privacy.md#checks): no personal field reaches a public topic, a
ClickHouse table or the public API that its contract does not allow; every table column and
API path is declared; and docs/governance.md is what `citystream governance report` makes.
Each check is shown failing on a deliberately bad contract in a temporary schema directory."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from citystream.cli import main
from citystream.governance import (
    GOVERNANCE_FILE,
    api_paths,
    api_problems,
    clickhouse_problems,
    report,
    topic_problems,
)
from connectors.sinks.clickhouse.backend import connect
from connectors.sinks.clickhouse.sink import ClickHouseSink
from core.settings import Settings
from families.registry import TOPICS
from schemas.catalog import AVRO_DIR
from schemas.contracts import SchemaContract, load_contracts
from schemas.exposure import NOT_PUBLIC_API, PUBLIC_API


def bad_contracts(tmp_path: Path, schema_file: str, field: str, **attributes: Any) -> dict:
    """The shipped contracts, with ``attributes`` set on ``field`` of ``schema_file`` (or a
    new personal field of that name), read back from a temporary schema directory."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    for path in AVRO_DIR.glob("*.avsc"):
        schema = json.loads(path.read_text())
        if path.name == schema_file:
            found = [f for f in schema["fields"] if f["name"] == field]
            if not found:
                schema["fields"].append({"name": field, "type": "string", "default": ""})
                found = [schema["fields"][-1]]
            found[0].update(attributes)
        (tmp_path / path.name).write_text(json.dumps(schema))
    return load_contracts(tmp_path)


PERSONAL = {
    "confluent:tags": ["PII"],
    "citystream.classification": "direct",
    "citystream.purpose": "identity",
    "citystream.allowed": [],
}


def test_no_personal_field_reaches_a_public_topic_its_contract_does_not_allow() -> None:
    assert topic_problems(load_contracts(), TOPICS.values()) == []


def test_a_personal_field_on_a_public_topic_fails(tmp_path: Path) -> None:
    contracts = bad_contracts(tmp_path, "kpi_record.avsc", "reporter", **PERSONAL)
    problems = topic_problems(contracts, TOPICS.values())
    assert problems == [
        "public topic city.kpi.v1: personal field kpi_record.avsc:reporter (direct) may not "
        "reach public-topic (its contract allows internal topics only)"
    ]


def test_a_restricted_topic_made_public_fails() -> None:
    opened = dataclasses.replace(TOPICS["city.service_requests.v1"], restricted=False)
    problems = topic_problems(load_contracts(), [opened])
    assert any("service_request_event.avsc:request_id (direct)" in p for p in problems)


def test_a_topic_without_a_contract_fails(tmp_path: Path) -> None:
    contracts = load_contracts()
    contracts.pop("traffic_reading.avsc")
    problems = topic_problems(contracts, [TOPICS["city.traffic.v1"]])
    assert problems == ["topic city.traffic.v1: schema 'traffic_reading.avsc' has no contract"]


def test_the_public_api_serves_no_personal_field_its_contract_does_not_allow() -> None:
    paths = api_paths()
    assert "/v1/kpis/{kpi}/series" in paths and "/v1/alerts" in paths
    assert api_problems(load_contracts(), paths) == []


def test_an_alert_field_kept_from_the_public_api_fails(tmp_path: Path) -> None:
    contracts = bad_contracts(
        tmp_path, "alert.avsc", "entity_id", **{"citystream.allowed": ["public-topic"]}
    )
    problems = api_problems(contracts, api_paths())
    assert sorted(problems) == [
        f"public API {path}: personal field alert.avsc:entity_id (indirect) may not reach "
        "public-api (its contract allows ['public-topic'])"
        for path in ("/v1/alerts", "/v1/stream")
    ]


def test_an_undeclared_api_path_fails() -> None:
    problems = api_problems(load_contracts(), [*api_paths(), "/v1/residents"])
    assert problems == ["API path /v1/residents: not declared public or not (schemas/exposure.py)"]
    assert not set(PUBLIC_API) & set(NOT_PUBLIC_API)


@pytest.fixture
def columns(tmp_path: Path) -> dict[str, list[str]]:
    """The columns of every table and view of a freshly migrated database (chDB)."""
    settings = Settings().model_copy(update={"data_dir": tmp_path / "data", "clickhouse_url": None})
    with ClickHouseSink(settings) as sink:
        sink.setup()
        client = connect(settings)
        try:
            client.command("ALTER TABLE kpi ADD COLUMN reporter String DEFAULT ''")
        finally:
            client.close()
        rows = sink.query(
            "SELECT table, name FROM system.columns WHERE database = currentDatabase() "
            "ORDER BY table, position"
        ).rows
    found: dict[str, list[str]] = {}
    for table, name in rows:
        found.setdefault(str(table), []).append(str(name))
    return found


def test_every_clickhouse_column_has_a_contract_and_no_personal_one_leaks(
    columns: dict[str, list[str]], tmp_path: Path
) -> None:
    assert {"kpi", "kpi_daily", "audit_log"} <= set(columns)
    contracts = load_contracts()
    # the column added to the migrated kpi table has no contract: refused by name
    assert clickhouse_problems(contracts, columns) == [
        "ClickHouse column kpi.reporter: neither a field of kpi_record.avsc nor a declared "
        "derived column"
    ]
    # as a field of the KPI contract, personal and kept out of ClickHouse: refused again
    personal = bad_contracts(tmp_path, "kpi_record.avsc", "reporter", **PERSONAL)
    assert clickhouse_problems(personal, columns) == [
        "ClickHouse table kpi: personal field kpi_record.avsc:reporter (direct) may not reach "
        "clickhouse (its contract allows internal topics only)"
    ]
    # allowed there: the check passes
    allowed = {**PERSONAL, "citystream.allowed": ["clickhouse"]}
    fine = bad_contracts(tmp_path / "fine", "kpi_record.avsc", "reporter", **allowed)
    assert clickhouse_problems(fine, columns) == []
    # an undeclared table
    assert clickhouse_problems(contracts, {"residents": ["address"]}) == [
        "ClickHouse table residents: not declared (citystream/governance.py)"
    ]


def test_committed_governance_report_is_the_generated_one() -> None:
    assert GOVERNANCE_FILE.read_text() == report(), (
        "docs/governance.md is out of date: run `citystream governance report --write`"
    )


def test_the_report_follows_the_contracts(tmp_path: Path) -> None:
    contracts: dict[str, SchemaContract] = bad_contracts(
        tmp_path, "kpi_record.avsc", "reporter", **PERSONAL
    )
    text = report(contracts)
    assert "| KpiRecord (`kpi_record.avsc`) | `reporter` | direct |" in text
    assert text != report()


def test_governance_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["governance", "check"]) == 0
    assert "0 problem(s)" in capsys.readouterr().out
    assert main(["governance", "report"]) == 0
    assert capsys.readouterr().out == report()
