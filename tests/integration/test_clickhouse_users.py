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

import pytest
from clickhouse_connect.driver.client import Client

from connectors.sinks.clickhouse.backend import connect
from connectors.sinks.clickhouse.schema import MIGRATIONS, Retention, migrate
from core.settings import Settings

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


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One chDB directory for the module: chDB opens one path per process."""
    return tmp_path_factory.mktemp("users")


def test_users_sql_parses_and_grants_only_real_tables(data_dir: Path) -> None:
    client = connect(Settings(data_dir=data_dir))
    migrate(client, "citystream", Retention())
    tables = {r[0] for r in client.query("SHOW TABLES FROM citystream").result_rows}
    sql = statements()
    assert len(sql) >= 15
    for statement in sql:
        ast = client.command(f"EXPLAIN AST {statement}")
        assert "Query" in str(ast), statement
    granted = set(re.findall(r"ON citystream\.(\w+)", " ".join(sql)))
    assert granted == tables
    sink_grants = [s for s in sql if s.endswith("TO citystream_sink_role")]
    assert sink_grants == [
        "GRANT INSERT ON citystream.kpi TO citystream_sink_role",
        "GRANT INSERT ON citystream.kpi_window_state TO citystream_sink_role",
        "GRANT INSERT ON citystream.kpi_series_latest TO citystream_sink_role",
        "GRANT INSERT ON citystream.kpi_trace_links TO citystream_sink_role",
        "GRANT SELECT ON citystream.schema_migrations TO citystream_sink_role",
        "GRANT SELECT ON system.tables TO citystream_sink_role",
        "GRANT INSERT ON citystream.audit_log TO citystream_sink_role",
    ]
    assert "readonly = 1 CONST" in USERS_SQL.read_text()


def test_sink_start_on_a_migrated_database_runs_no_ddl(data_dir: Path) -> None:
    client = connect(Settings(data_dir=data_dir))
    client.command("DROP DATABASE IF EXISTS citystream")
    assert migrate(client, "citystream", Retention()) == [m.version for m in MIGRATIONS]
    spy = RecordingClient(client)
    assert migrate(spy, "citystream", Retention()) == []  # type: ignore[arg-type]
    assert spy.commands[0] == "EXISTS TABLE `citystream`.schema_migrations"
    assert all(c.startswith(("EXISTS", "SELECT")) for c in spy.commands), spy.commands
