"""Governance changes are audited (#17): `citystream init` appends one ``governance`` record
for each existing topic whose configs it aligns with the topic's data contract, and
`citystream migrate` one for each ClickHouse table whose TTL it alters; a run that changes
nothing appends nothing. On the real Kafka, registry and chDB, through the CLI.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

from citystream.cli import main
from core.settings import Settings
from tests.integration.test_retention import DAY_MS, config_value
from trust.audit.log import read_log

pytestmark = pytest.mark.integration


def cli(settings: Settings, *args: str) -> int:
    return main(
        [*args, "--topic-prefix", settings.topic_prefix, "--data-dir", str(settings.data_dir)]
    )


def governance(settings: Settings) -> list[dict[str, Any]]:
    """The governance records of the test's audit log, in order."""
    return [r.record for r in read_log(settings) if r.record and r.record["action"] == "governance"]


def drift(settings: Settings, names: list[str]) -> None:
    """Set ``retention.ms`` of these topics to -1 behind init's back."""
    admin = AdminClient(settings.kafka_config())
    resources = [
        ConfigResource(
            ResourceType.TOPIC,
            settings.topic(name),
            incremental_configs=[
                ConfigEntry("retention.ms", "-1", incremental_operation=AlterConfigOpType.SET)
            ],
        )
        for name in names
    ]
    for future in admin.incremental_alter_configs(resources).values():
        future.result()
    for name in names:
        assert config_value(settings, name, "retention.ms", "-1") == "-1"


def test_init_audits_each_topic_it_realigns_and_nothing_else(settings: Settings) -> None:
    assert cli(settings, "init") == 0  # creates every topic as its contract says
    assert governance(settings) == []  # created, not changed

    drift(settings, ["city.service_requests.v1", "city.kpi.v1"])
    assert cli(settings, "init") == 0
    records = governance(settings)
    assert len(records) == 2, records  # exactly one per topic changed
    assert {r["endpoint"] for r in records} == {"citystream init"}
    assert {r["role"] for r in records} == {"operator"}
    assert all(r["key_id"].startswith("local:") for r in records)
    params = {p["topic"]: p["set"] for p in (json.loads(r["parameters"]) for r in records)}
    assert params == {
        settings.topic("city.service_requests.v1"): {"retention.ms": str(35 * DAY_MS)},
        settings.topic("city.kpi.v1"): {"retention.ms": str(7 * DAY_MS)},
    }

    wanted = str(35 * DAY_MS)
    assert config_value(settings, "city.service_requests.v1", "retention.ms", wanted) == wanted
    assert cli(settings, "init") == 0  # nothing differs now: nothing recorded
    assert governance(settings) == records


def test_migrate_audits_a_ttl_change_and_nothing_else(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CITYSTREAM_CLICKHOUSE_URL", raising=False)  # chDB in the test's dir
    monkeypatch.delenv("CITYSTREAM_CLICKHOUSE_KPI_TTL_DAYS", raising=False)
    monkeypatch.delenv("CITYSTREAM_CLICKHOUSE_ROLLUP_TTL_DAYS", raising=False)
    assert cli(settings, "init") == 0
    assert cli(settings, "migrate") == 0
    first = governance(settings)  # the contract's TTLs, if the fresh tables lacked them
    assert cli(settings, "migrate") == 0
    assert governance(settings) == first  # up to date: nothing recorded

    monkeypatch.setenv("CITYSTREAM_CLICKHOUSE_KPI_TTL_DAYS", "7")  # shorter than the contract
    assert cli(settings, "migrate") == 0
    records = governance(settings)[len(first) :]
    # the kpi table's TTL, and kpi_series_latest's, which follows it
    assert len(records) == 2, records
    for record, table in zip(records, ("kpi", "kpi_series_latest"), strict=True):
        assert record["endpoint"] == "citystream migrate"
        assert json.loads(record["parameters"]) == {
            "table": f"{settings.clickhouse_database}.{table}",
            "ttl": "toDateTime(window_start) + toIntervalDay(7)",
            "from": "data contract and settings",
        }
    assert cli(settings, "migrate") == 0  # the same setting again: nothing changes
    assert governance(settings)[len(first) :] == records
