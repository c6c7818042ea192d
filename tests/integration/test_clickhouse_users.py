"""infra/clickhouse/users.sql against ClickHouse's own parser and our real tables.

chDB cannot execute CREATE USER / GRANT (its `default` user has no access management and
there is no user directory), so the grants themselves are not enforced here. What runs:
every statement parses (EXPLAIN AST), every table granted is one the migrations create,
and a sink starting on a migrated database runs no DDL, so the sink user needs nothing
beyond INSERT on kpi and SELECT on schema_migrations.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from clickhouse_connect.driver.client import Client

from citystream.settings import Settings
from connectors.sinks.clickhouse import connect, migrate

USERS_SQL = Path(__file__).resolve().parents[2] / "infra/clickhouse/users.sql"


def statements() -> list[str]:
    text = "\n".join(line.split("--")[0] for line in USERS_SQL.read_text().splitlines())
    return [s.strip() for s in text.split(";") if s.strip()]


class RecordingClient:
    """The real client, remembering every command it ran (a spy, not a mock)."""

    def __init__(self, client: Client) -> None:
        self.client, self.commands = client, []  # type: ignore[var-annotated]

    def command(self, sql: str, **kwargs: Any) -> Any:
        self.commands.append(sql)
        return self.client.command(sql, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def test_users_sql_parses_and_grants_only_real_tables(tmp_path: Path) -> None:
    client = connect(Settings(data_dir=tmp_path))
    migrate(client, "citystream")
    tables = {r[0] for r in client.query("SHOW TABLES FROM citystream").result_rows}
    assert {"kpi", "kpi_latest", "schema_migrations"} <= tables
    sql = statements()
    assert len(sql) >= 15
    for statement in sql:
        ast = client.command(f"EXPLAIN AST {statement}")
        assert "Query" in str(ast), statement
    granted = set(re.findall(r"ON citystream\.(\w+)", " ".join(sql)))
    assert granted == {"kpi", "kpi_latest", "schema_migrations"}
    sink_grants = [s for s in sql if s.endswith("TO citystream_sink_role")]
    assert sink_grants == [
        "GRANT INSERT ON citystream.kpi TO citystream_sink_role",
        "GRANT SELECT ON citystream.schema_migrations TO citystream_sink_role",
    ]
    assert "readonly = 1 CONST" in USERS_SQL.read_text()


def test_sink_start_on_a_migrated_database_runs_no_ddl(tmp_path: Path) -> None:
    client = connect(Settings(data_dir=tmp_path))
    assert migrate(client, "citystream") == [1, 2]
    spy = RecordingClient(client)
    assert migrate(spy, "citystream") == []  # type: ignore[arg-type]
    assert spy.commands == ["EXISTS TABLE `citystream`.schema_migrations"]
