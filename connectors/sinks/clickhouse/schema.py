"""The KPI tables: their columns, the numbered migrations that create them, and retention.

``kpi`` is a ReplacingMergeTree keyed by (kpi, scope, entity_id, window_start) whose
version is (samples, revision), so a replayed or redelivered record collapses into the row
it duplicates and ``kpi FINAL`` / ``kpi_latest`` show one row per key: the most complete,
even when a restarted processor numbers its revisions from 0 again. The views built on it
(``kpi_daily``, ``kpi_equity``) are the analysts' contract (docs/contracts.md).

``kpi_series_latest`` holds each series' (kpi, scope, entity_id) latest window, kept by a
materialized view as the sink inserts into ``kpi``, so listing the series (NGSI-LD, the
map) reads one row per series instead of grouping the whole table. It is a
ReplacingMergeTree keyed by the series whose version is (window_start, kpi's version): the
newest window wins, and of its rows the one ``kpi FINAL`` keeps (the most complete; on a
tie the last inserted, as in ``kpi``). ``kpi_series_latest FINAL`` therefore equals the
newest row per series of ``kpi FINAL``, also after a revision or a replay (tests/
integration/test_series_latest.py). Its TTL is kpi's: a series all of whose windows
expired leaves both.

``kpi_daily`` counts the city's local days: a window belongs to the day, in the city's time
zone, that its ``window_start`` falls on (``toDate(window_start, zone)``). The zone is the
city pack's ``timezone`` when a pack is set, else the ``timezone`` setting (default
Europe/Copenhagen, the shipped city's): :func:`day_zone` reads it when the sink's setup
(which ``citystream migrate`` and ``citystream sink`` run) calls it, never at import, and
:func:`migrate` receives it. The rollup's state holds one row per window, not per day, so the day
is taken when the view is read: moving the day boundaries (migration 7, or a later change
of zone) replaces the view and re-counts every window still in the state, with nothing to
rebuild from ``kpi`` (whose rows may have expired before the rollup's).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from clickhouse_connect.driver.binding import format_str, quote_identifier

from connectors.sinks.clickhouse.backend import Session
from core import telemetry
from core.settings import Settings
from schemas.contracts import SchemaContract, ttl_days
from schemas.contracts import contract as kpi_contract

log = logging.getLogger(__name__)

KPI_TABLE = "kpi"
TRACE_LINKS_TABLE = "kpi_trace_links"  # telemetry: KPI row <-> traces (docs/observability.md)
ROLLUP_STATE_TABLE = "kpi_window_state"
SERIES_LATEST_TABLE = "kpi_series_latest"  # each series' latest window (see above)
DAILY_VIEW = "kpi_daily"

# The analysts' contract: names and types of the kpi table, in insert order.
KPI_COLUMNS: tuple[tuple[str, str], ...] = (
    ("kpi", "LowCardinality(String)"),
    ("scope", "LowCardinality(String)"),
    ("entity_id", "String"),
    ("window_start", "DateTime64(3, 'UTC')"),
    ("window_end", "DateTime64(3, 'UTC')"),
    ("value", "Float64"),
    ("samples", "UInt32"),
    ("revision", "UInt32"),
    ("computed_at", "DateTime64(3, 'UTC')"),
)
KPI_COLUMN_NAMES = tuple(name for name, _ in KPI_COLUMNS)
KPI_CONTRACT = "kpi_record.avsc"  # the data contract of the kpi table's rows (and the rollup's)
KPI_COLUMN_TYPES = tuple(type_ for _, type_ in KPI_COLUMNS)


@dataclass(frozen=True)
class Migration:
    """One numbered schema change; ``{db}`` in a statement is the quoted database, ``{zone}``
    the quoted time zone of the city's local days."""

    version: int
    name: str
    statements: tuple[str, ...]


_KPI_COLUMNS_DDL = ",\n    ".join(f"{name} {type_}" for name, type_ in KPI_COLUMNS)
_TRACE_LINKS_DDL = ",\n    ".join(f"{n} {t}" for n, t in telemetry.TRACE_LINK_COLUMNS)

# One row per window in the rollup's state: the value and samples of the version that wins
# in ``kpi`` (argMax by the same ``version``), so a revised or re-inserted window replaces
# its earlier rows instead of adding to them. argMax states merge idempotently, so the
# backfill may overlap rows the view already saw.
_WINDOW_STATE_SELECT = """SELECT kpi, scope, entity_id, window_start,
    argMaxState(value, version) AS value,
    argMaxState(samples, version) AS samples
FROM {db}.kpi
GROUP BY kpi, scope, entity_id, window_start"""


def _daily_view(create: str, day: str) -> str:
    """The ``kpi_daily`` statement: the winning value of each window, aggregated per ``day``."""
    return f"""{create} {{db}}.kpi_daily AS
SELECT kpi, scope, entity_id, {day} AS day,
    count() AS windows,
    sum(value) AS sum_value,
    avg(value) AS avg_value,
    min(value) AS min_value,
    max(value) AS max_value,
    sum(samples) AS samples
FROM (
    SELECT kpi, scope, entity_id, window_start,
        argMaxMerge(value) AS value,
        argMaxMerge(samples) AS samples
    FROM {{db}}.kpi_window_state
    GROUP BY kpi, scope, entity_id, window_start
)
GROUP BY kpi, scope, entity_id, day"""


# kpi_series_latest's version: the window's start (epoch ms, 41 bits) above kpi's version
# (64 bits: samples, revision), so a newer window always wins and, within one window, the
# row kpi's own version picks.
_SERIES_VERSION = (
    "bitShiftLeft(toUInt128(toUnixTimestamp64Milli(window_start)), 64)"
    " + bitShiftLeft(toUInt64(samples), 32) + revision"
)
_KPI_SELECT = ", ".join(KPI_COLUMN_NAMES)


# The city's local day of a window: the day its start falls on in the city's time zone.
_LOCAL_DAILY_VIEW = _daily_view("CREATE OR REPLACE VIEW", "toDate(window_start, {zone})")
LOCAL_DAYS_VERSION = 7
DEFAULT_DAY_ZONE: str = Settings.model_fields["timezone"].default  # the shipped city's

# The audit log for queries: one row per record of city.audit.v1, keyed by its leaf index
# (its offset: a redelivered record collapses into its row). The topic is the evidence,
# `citystream audit verify` checks it; this table is for looking things up. No TTL.
AUDIT_TABLE = "audit_log"
AUDIT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("leaf_index", "UInt64"),
    ("at", "DateTime64(3, 'UTC')"),
    ("key_id", "Nullable(String)"),
    ("role", "LowCardinality(String)"),
    ("action", "LowCardinality(String)"),
    ("endpoint", "String"),
    ("parameters", "String"),
    ("sql", "Nullable(String)"),
    ("rows", "UInt64"),
    ("leaf_hash", "String"),  # hex RFC 9162 leaf hash, to match proofs
)
_AUDIT_COLUMNS_DDL = ",\n    ".join(f"{name} {type_}" for name, type_ in AUDIT_COLUMNS)

# Districts that are not one (readings of segments missing from the reference data).
UNKNOWN_DISTRICT = "unknown"

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "create kpi",
        (
            f"""CREATE TABLE IF NOT EXISTS {{db}}.kpi (
    {_KPI_COLUMNS_DDL},
    version UInt64 MATERIALIZED bitShiftLeft(toUInt64(samples), 32) + revision
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(window_start)
ORDER BY (kpi, scope, entity_id, window_start)""",
        ),
    ),
    Migration(
        2,
        "create kpi_latest",
        (
            f"""CREATE VIEW IF NOT EXISTS {{db}}.kpi_latest AS
SELECT {", ".join(KPI_COLUMN_NAMES)} FROM {{db}}.kpi FINAL""",
        ),
    ),
    Migration(
        3,
        "create kpi_window_state, its materialized view and backfill",
        (
            """CREATE TABLE IF NOT EXISTS {db}.kpi_window_state (
    kpi LowCardinality(String),
    scope LowCardinality(String),
    entity_id String,
    window_start DateTime64(3, 'UTC'),
    value AggregateFunction(argMax, Float64, UInt64),
    samples AggregateFunction(argMax, UInt32, UInt64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(window_start)
ORDER BY (kpi, scope, entity_id, window_start)""",
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.kpi_window_state_mv "
            "TO {db}.kpi_window_state AS\n" + _WINDOW_STATE_SELECT,
            "INSERT INTO {db}.kpi_window_state\n" + _WINDOW_STATE_SELECT,
        ),
    ),
    Migration(
        4,
        "create kpi_daily",  # in UTC days until migration 7
        (_daily_view("CREATE VIEW IF NOT EXISTS", "toDate(window_start)"),),
    ),
    Migration(
        5,
        "create kpi_equity",
        (
            f"""CREATE VIEW IF NOT EXISTS {{db}}.kpi_equity AS
SELECT kpi, entity_id AS district, window_start, window_end, value,
    quantileExactInclusive(0.5)(value) OVER per_window AS city_median,
    value - city_median AS gap,
    if(city_median = 0, NULL, (value - city_median) / abs(city_median)) AS relative_gap,
    count() OVER per_window AS districts
FROM {{db}}.kpi FINAL
WHERE scope = 'district' AND entity_id != '{UNKNOWN_DISTRICT}'
WINDOW per_window AS (PARTITION BY kpi, window_start)""",
        ),
    ),
    Migration(
        6,
        "create kpi_trace_links",
        (
            f"""CREATE TABLE IF NOT EXISTS {{db}}.{TRACE_LINKS_TABLE} (
    {_TRACE_LINKS_DDL},
    INDEX input_traces input_trace_ids TYPE bloom_filter GRANULARITY 4
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(window_start)
ORDER BY (kpi, scope, entity_id, window_start, revision)
TTL toDateTime(written_at) + INTERVAL 30 DAY""",
        ),
    ),
    Migration(
        LOCAL_DAYS_VERSION,
        "kpi_daily in the city's local days",
        (_LOCAL_DAILY_VIEW,),  # the state is per window: nothing to rebuild
    ),
    Migration(
        8,
        "create audit_log",  # the audit topic for queries (connectors/sinks/clickhouse/audit.py)
        (
            f"""CREATE TABLE IF NOT EXISTS {{db}}.{AUDIT_TABLE} (
    {_AUDIT_COLUMNS_DDL}
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(at)
ORDER BY leaf_index""",
        ),
    ),
    Migration(
        9,
        "create kpi_series_latest, its materialized view and backfill",
        (
            # Not partitioned: rows replace each other only within a partition, and a
            # series' windows span months.
            f"""CREATE TABLE IF NOT EXISTS {{db}}.{SERIES_LATEST_TABLE} (
    {_KPI_COLUMNS_DDL},
    version UInt128 MATERIALIZED {_SERIES_VERSION}
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (kpi, scope, entity_id)""",
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS {{db}}.{SERIES_LATEST_TABLE}_mv "
            f"TO {{db}}.{SERIES_LATEST_TABLE} AS\nSELECT {_KPI_SELECT} FROM {{db}}.kpi",
            # the newest winning row of each series already stored, one row per series
            # (an existing city's database gains the table with its contents)
            f"INSERT INTO {{db}}.{SERIES_LATEST_TABLE} ({_KPI_SELECT})\n"
            f"SELECT {_KPI_SELECT} FROM {{db}}.kpi FINAL\n"
            "ORDER BY kpi, scope, entity_id, window_start DESC LIMIT 1 BY kpi, scope, entity_id",
        ),
    ),
)

_MIGRATIONS_DDL = """CREATE TABLE IF NOT EXISTS {db}.schema_migrations (
    version UInt32,
    name String,
    applied_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY version"""


@dataclass(frozen=True)
class Retention:
    """Days each table keeps a window after its start (0 = forever); a TTL, so ClickHouse
    drops expired rows in the background. ``kpi`` and the rollup's state expire apart, so
    daily figures can outlive the 15-minute rows they came from."""

    kpi_days: int = 0
    rollup_days: int = 0

    @classmethod
    def from_settings(cls, settings: Settings, contract: SchemaContract | None = None) -> Retention:
        """The KPI contract's retention (schemas/avro/kpi_record.avsc, or ``contract``) by
        default; the ``clickhouse_*_ttl_days`` settings may shorten it, never lengthen it."""
        span = (contract or kpi_contract(KPI_CONTRACT)).storage_retention
        return cls(
            ttl_days(settings.clickhouse_kpi_ttl_days, span),
            ttl_days(settings.clickhouse_rollup_ttl_days, span),
        )

    def by_table(self) -> dict[str, int]:
        return {
            KPI_TABLE: self.kpi_days,
            ROLLUP_STATE_TABLE: self.rollup_days,
            SERIES_LATEST_TABLE: self.kpi_days,  # a series leaves it when it leaves kpi
        }


def ttl_expression(days: int) -> str | None:
    """The TTL as ClickHouse prints it back in ``engine_full``, so it compares as text."""
    return f"toDateTime(window_start) + toIntervalDay({days})" if days > 0 else None


def _ttl_of(engine_full: str) -> str | None:
    found = re.search(r"\bTTL (.+?)(?: SETTINGS |$)", engine_full)
    return found.group(1) if found else None


def _engine_full(client: Session, database: str, table: str) -> str | None:
    """The table's engine as the server prints it, None when there is no such table."""
    result = client.query(
        "SELECT engine_full FROM system.tables WHERE database = {db:String} AND name = {t:String}",
        parameters={"db": database, "t": table},
    )
    return str(result.result_rows[0][0]) if result.result_rows else None


def apply_retention(client: Session, database: str, retention: Retention) -> dict[str, str | None]:
    """Make each table's TTL follow ``retention``; returns the tables changed and their TTL.

    Only a differing TTL is altered: MODIFY TTL rewrites the parts holding expired rows, which
    a restart of the sink should not repeat.
    """
    changed: dict[str, str | None] = {}
    for table, days in retention.by_table().items():
        engine = _engine_full(client, database, table)
        if engine is None:
            continue  # not created yet (migrations staged up to an earlier version)
        wanted = ttl_expression(days)
        if _ttl_of(engine) == wanted:
            continue
        name = f"{quote_identifier(database)}.{quote_identifier(table)}"
        alter = f"MODIFY TTL {wanted}" if wanted else "REMOVE TTL"
        client.command(f"ALTER TABLE {name} {alter}", use_database=False)
        log.info("ClickHouse table %s: TTL now %s", table, wanted or "none (kept forever)")
        changed[table] = wanted
    return changed


def day_zone(settings: Settings) -> str:
    """The time zone of the city's local days: the pack's ``timezone`` when ``settings.city``
    names a pack (it reads city.toml: call it from an entry point), else the ``timezone``
    setting; raises ValueError for a zone that is not a known IANA name."""
    if settings.city is not None:
        from core.city import read_spec  # the pack loader, only when a pack is set

        return read_spec(settings.city)[0].timezone  # validated by the pack
    return known_zone(settings.timezone)


def known_zone(zone: str) -> str:
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"timezone {zone!r} is not a known IANA time zone") from exc
    return zone


def current_day_zone(client: Session, database: str) -> str | None:
    """The zone of ``kpi_daily``'s days as the server prints its query back (None: UTC days,
    as migration 4 made them, or no view)."""
    result = client.query(
        "SELECT as_select FROM system.tables WHERE database = {db:String} AND name = {t:String}",
        parameters={"db": database, "t": DAILY_VIEW},
    )
    select = str(result.result_rows[0][0]) if result.result_rows else ""
    found = re.search(r"toDate\(window_start, '([^'\\]+)'\)", select)
    return found.group(1) if found else None


def apply_day_zone(client: Session, database: str, zone: str) -> bool:
    """Make ``kpi_daily`` count days in ``zone``; True if the view was replaced. Only a
    differing zone replaces it, so a start on an up-to-date database runs no DDL."""
    if current_day_zone(client, database) == known_zone(zone):
        return False
    statement = _LOCAL_DAILY_VIEW.format(db=quote_identifier(database), zone=format_str(zone))
    client.command(statement, use_database=False)
    log.info("ClickHouse view %s: days now local to %s", DAILY_VIEW, zone)
    return True


def _applied(client: Session, db: str) -> set[int]:
    if str(client.command(f"EXISTS TABLE {db}.schema_migrations", use_database=False)) != "1":
        return set()
    rows = client.query(f"SELECT version FROM {db}.schema_migrations FINAL").result_rows
    return {int(row[0]) for row in rows}


def migrate(
    client: Session,
    database: str,
    retention: Retention,
    migrations: Sequence[Migration] = MIGRATIONS,
    *,
    zone: str = DEFAULT_DAY_ZONE,
    ttl_changes: dict[str, str | None] | None = None,
) -> list[int]:
    """Create the database, apply pending ``migrations``, the retention and the time zone of
    the local days (``zone``, see :func:`day_zone`); returns the migration versions applied
    now. Tests pass a prefix of MIGRATIONS to stage upgrades. ``ttl_changes``, when given,
    receives each table whose TTL was altered (``database.table``: the new TTL, None for
    none), for `citystream migrate` to audit as a governance change (#17).

    When every migration is applied and the TTLs and the zone are as set, it runs no DDL at
    all, so the sink can start as a user that may only insert KPIs
    (infra/clickhouse/users.sql).
    """
    db = quote_identifier(database)
    literal = format_str(known_zone(zone))
    local_days = LOCAL_DAYS_VERSION in {m.version for m in migrations}
    if {m.version for m in migrations} <= _applied(client, db):
        _note_ttls(ttl_changes, database, apply_retention(client, database, retention))
        if local_days:
            apply_day_zone(client, database, zone)
        return []
    client.command(f"CREATE DATABASE IF NOT EXISTS {db}", use_database=False)
    client.command(_MIGRATIONS_DDL.format(db=db), use_database=False)
    done = _applied(client, db)
    applied = []
    for migration in migrations:
        if migration.version in done:
            continue
        for statement in migration.statements:
            client.command(statement.format(db=db, zone=literal), use_database=False)
        client.insert(
            "schema_migrations",
            [[migration.version, migration.name, datetime.now(UTC)]],
            column_names=["version", "name", "applied_at"],
            database=database,
        )
        log.info("applied ClickHouse migration %d (%s)", migration.version, migration.name)
        applied.append(migration.version)
    _note_ttls(ttl_changes, database, apply_retention(client, database, retention))
    if local_days:
        apply_day_zone(client, database, zone)
    return applied


def _note_ttls(
    into: dict[str, str | None] | None, database: str, changed: dict[str, str | None]
) -> None:
    if into is not None:
        into.update({f"{database}.{table}": ttl for table, ttl in changed.items()})
