-- The analyst's user on a ClickHouse server (docs/security.md): read-only, SELECT on the genealogy
-- tables and views only, capped. The query service connects with it through GENEALOGY_ANALYST_DSN,
-- e.g. http://analyst:<password>@clickhouse:8123/default; the sink keeps GENEALOGY_CLICKHOUSE_DSN.
--
-- Run once as an admin (clickhouse-client --multiquery < deploy/clickhouse-analyst.sql), or mount
-- it into the server image's /docker-entrypoint-initdb.d/. Grants name tables, so they may be given
-- before `genealogy serve` has created them. Replace the password (or use IDENTIFIED WITH sha256_hash).
-- Not yet run against a server: the development machines have no Docker engine (deploy/README.md).

-- readonly = 1 CONST: no SET, no per-query SETTINGS, no DDL, no temporary tables, no INSERT, no
-- table functions. The caps are the embedded defaults (genealogy/settings.py analyst_*); MAX keeps a
-- readonly=1 session from raising them, CONST from changing them at all.
CREATE SETTINGS PROFILE IF NOT EXISTS genealogy_analyst SETTINGS
    readonly = 1 CONST,
    allow_ddl = 0 CONST,
    allow_introspection_functions = 0 CONST,
    max_execution_time = 10 MAX 10,
    timeout_overflow_mode = 'throw' CONST,
    max_memory_usage = 1073741824 MAX 1073741824,
    max_result_rows = 100000 MAX 100000,
    max_result_bytes = 67108864 MAX 67108864,
    result_overflow_mode = 'throw' CONST,
    max_concurrent_queries_for_user = 4 MAX 4;

CREATE USER IF NOT EXISTS analyst IDENTIFIED WITH sha256_password BY 'change-me'
    DEFAULT DATABASE default
    SETTINGS PROFILE 'genealogy_analyst';

-- Only SELECT, only these: no system.* beyond what every user sees of itself, no file/url/remote/s3
-- sources (those need the READ ON <source> / CREATE TEMPORARY TABLE grants, not given).
REVOKE ALL ON *.* FROM analyst;
GRANT SELECT ON default.edges TO analyst;
GRANT SELECT ON default.edges_by_parent TO analyst;
GRANT SELECT ON default.units TO analyst;
GRANT SELECT ON default.lot_members TO analyst;
GRANT SELECT ON default.units_by_station TO analyst;
GRANT SELECT ON default.nodes TO analyst;
GRANT SELECT ON default.capture_batches TO analyst;
GRANT SELECT ON default.station_facts TO analyst;
GRANT SELECT ON default.corrections TO analyst;
GRANT SELECT ON default.unpacked TO analyst;
GRANT SELECT ON default.held_intervals TO analyst;
GRANT SELECT ON default.removals TO analyst;
GRANT SELECT ON default.dead_letters TO analyst;
GRANT SELECT ON default.edges_final TO analyst;
GRANT SELECT ON default.units_final TO analyst;
GRANT SELECT ON default.dead_letters_final TO analyst;
GRANT SELECT ON default.reprocessed TO analyst;
GRANT SELECT ON default.epcis_events TO analyst;

-- A quota: a runaway dashboard cannot read the store all day.
CREATE QUOTA IF NOT EXISTS genealogy_analyst FOR INTERVAL 1 hour MAX queries = 10000, read_rows = 100000000000
    TO analyst;
