"""The audit topic reaches ClickHouse's audit_log table, in batches, through the sink's
session (real Kafka, real chDB): one row per record, with its leaf index and the leaf hash
the Merkle tree uses, so a row found by SQL leads to its proof."""

from __future__ import annotations

import pytest

from citystream.cli import main
from connectors.sinks.clickhouse import ClickHouseSink
from connectors.sinks.clickhouse.audit import AuditLogSink
from core.audit_append import AuditAppender, AuditEntry, ensure_audit_topics
from core.kafka import create_topics
from core.settings import Settings
from schemas.catalog import CORE_TOPICS
from tests.integration.sink_harness import running, wait_for
from trust.audit.log import build_tree, read_log

pytestmark = pytest.mark.integration


def test_audit_records_land_in_audit_log(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    ensure_audit_topics(settings)
    create_topics(settings, [CORE_TOPICS["city.dlq.v1"]])
    appender = AuditAppender(settings)
    for i in range(7):
        appender.append(
            AuditEntry(
                role="auditor" if i % 2 else "public",
                action="export" if i == 3 else "read",
                endpoint="/v1/kpis/{kpi}/series",
                parameters={"kpi": "air.aqi", "i": i},
                key_id="aud-1" if i % 2 else None,
                sql="SELECT 1" if i == 5 else None,
                rows=i * 10,
                at_ms=1_733_300_000_000 + i,
            )
        )
    appender.close()
    kpi_sink = ClickHouseSink(settings)
    kpi_sink.setup()
    audit = AuditLogSink(kpi_sink)
    try:
        with running(audit) as errors:
            wait_for(lambda: audit.rows_inserted >= 7, "7 audit rows", errors)
        result = kpi_sink.query(
            "SELECT leaf_index, key_id, role, action, rows, sql, leaf_hash, "
            "toUnixTimestamp64Milli(at) FROM audit_log FINAL ORDER BY leaf_index"
        )
    finally:
        kpi_sink.close()
    tree = build_tree(read_log(settings))
    assert [row[0] for row in result.rows] == list(range(7))
    assert [row[6] for row in result.rows] == [h.hex() for h in tree.hashes]
    assert result.rows[3][3] == "export" and result.rows[5][5] == "SELECT 1"
    assert result.rows[1][1:3] == ["aud-1", "auditor"] and result.rows[0][1] is None
    assert [row[4] for row in result.rows] == [i * 10 for i in range(7)]
    assert result.rows[6][7] == 1_733_300_000_006

    # citystream query (here on the directory itself, the sink being stopped) is audited
    sql = "SELECT count() FROM audit_log"
    args = ["--topic-prefix", settings.topic_prefix, "--data-dir", str(settings.data_dir)]
    assert main(["query", sql, "--format", "csv", *args]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "7"
    last = read_log(settings)[-1].record
    assert last is not None
    assert (last["action"], last["endpoint"], last["sql"], last["rows"]) == (
        "query",
        "citystream query",
        sql,
        1,
    )
    assert last["role"] == "operator" and last["key_id"].startswith("local:")
