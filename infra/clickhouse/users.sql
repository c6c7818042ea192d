-- Least-privilege ClickHouse access for citystream (run once, as an admin, on the server).
-- Replace the four passwords (or use `IDENTIFIED WITH sha256_hash BY '<hex>'`), and keep
-- them in Secrets: the chart reads CITYSTREAM_CLICKHOUSE_USERNAME/_PASSWORD from
-- secrets.clickhouse. Database name: CITYSTREAM_CLICKHOUSE_DATABASE (default citystream).
--
--   migrator  runs `citystream migrate` (the helm migrate Job): creates the database,
--             tables and view; nothing else.
--   sink      `citystream sink clickhouse`: may only INSERT KPI and audit rows and read which
--             migrations are applied (its start-up check). It cannot create, alter, drop,
--             delete or read the KPIs.
--   analyst   read-only (readonly = 1) on the KPI table and view, with query limits.
--   auditor   the analyst's reads plus the audit log table (audit_log), read-only.
--
-- API roles (api keys, docs/audit.md) map onto these users, least privilege first:
--   public, analyst -> analyst (the API suppresses small cells for the public itself)
--   auditor         -> auditor (adds audit_log; proofs come from the audit topic)
--   operator        -> auditor for reads; changes go through the migrator and sink jobs

CREATE DATABASE IF NOT EXISTS citystream;

-- --- roles ----------------------------------------------------------------------------
CREATE ROLE IF NOT EXISTS citystream_migrator_role;
GRANT CREATE DATABASE, CREATE TABLE, CREATE VIEW, ALTER TABLE ON citystream.* TO citystream_migrator_role;
GRANT SELECT, INSERT ON citystream.schema_migrations TO citystream_migrator_role;
GRANT SELECT ON citystream.kpi TO citystream_migrator_role;
GRANT SELECT, INSERT ON citystream.kpi_window_state TO citystream_migrator_role;  -- the rollup's backfill
GRANT SELECT ON citystream.kpi_window_state_mv TO citystream_migrator_role;  -- the view selects from it
GRANT DROP VIEW ON citystream.kpi_daily TO citystream_migrator_role;  -- CREATE OR REPLACE: its local days
GRANT SELECT, INSERT ON citystream.kpi_series_latest TO citystream_migrator_role;  -- its backfill
GRANT SELECT ON citystream.kpi_series_latest_mv TO citystream_migrator_role;  -- the view selects from it

CREATE ROLE IF NOT EXISTS citystream_sink_role;
GRANT INSERT ON citystream.kpi TO citystream_sink_role;
GRANT INSERT ON citystream.kpi_window_state TO citystream_sink_role;  -- through the rollup's view
GRANT INSERT ON citystream.kpi_series_latest TO citystream_sink_role;  -- through its view
GRANT INSERT ON citystream.kpi_trace_links TO citystream_sink_role;  -- when tracing is on
GRANT SELECT ON citystream.schema_migrations TO citystream_sink_role;
GRANT SELECT ON system.tables TO citystream_sink_role;  -- the TTL check of migrate
GRANT INSERT ON citystream.audit_log TO citystream_sink_role;  -- the audit topic, for queries

CREATE ROLE IF NOT EXISTS citystream_analyst_role;
GRANT SELECT ON citystream.kpi TO citystream_analyst_role;
GRANT SELECT ON citystream.kpi_latest TO citystream_analyst_role;
GRANT SELECT ON citystream.kpi_daily TO citystream_analyst_role;
GRANT SELECT ON citystream.kpi_window_state TO citystream_analyst_role;  -- kpi_daily reads it
GRANT SELECT ON citystream.kpi_equity TO citystream_analyst_role;
GRANT SELECT ON citystream.kpi_series_latest TO citystream_analyst_role;  -- NGSI-LD, the map
GRANT SELECT ON citystream.kpi_trace_links TO citystream_analyst_role;

CREATE ROLE IF NOT EXISTS citystream_auditor_role;
GRANT citystream_analyst_role TO citystream_auditor_role;
GRANT SELECT ON citystream.audit_log TO citystream_auditor_role;

-- --- analysts' limits: read-only whatever the client asks for -------------------------
CREATE SETTINGS PROFILE IF NOT EXISTS citystream_analyst_profile SETTINGS
    readonly = 1 CONST,
    max_execution_time = 60,
    max_memory_usage = 4000000000,
    max_rows_to_read = 1000000000,
    max_result_rows = 1000000,
    result_overflow_mode = 'throw',
    max_concurrent_queries_for_user = 4;

-- --- users ------------------------------------------------------------------------------
CREATE USER IF NOT EXISTS citystream_migrator
    IDENTIFIED WITH sha256_password BY 'change-me-migrator';
GRANT citystream_migrator_role TO citystream_migrator;

CREATE USER IF NOT EXISTS citystream_sink
    IDENTIFIED WITH sha256_password BY 'change-me-sink';
GRANT citystream_sink_role TO citystream_sink;

CREATE USER IF NOT EXISTS analyst
    IDENTIFIED WITH sha256_password BY 'change-me-analyst'
    SETTINGS PROFILE 'citystream_analyst_profile';
GRANT citystream_analyst_role TO analyst;

CREATE USER IF NOT EXISTS auditor
    IDENTIFIED WITH sha256_password BY 'change-me-auditor'
    SETTINGS PROFILE 'citystream_analyst_profile';
GRANT citystream_auditor_role TO auditor;
