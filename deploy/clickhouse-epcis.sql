-- The EPCIS query interface's user on a ClickHouse server (docs/security.md): read-only, SELECT on
-- epcis_events only, capped by its settings profile. The query service connects with it through
-- GENEALOGY_EPCIS_DSN, e.g. http://epcis:<password>@clickhouse:8123/default; the sink keeps
-- GENEALOGY_CLICKHOUSE_DSN and analysts GENEALOGY_ANALYST_DSN.
--
-- Run once as an admin (clickhouse-client --multiquery < deploy/clickhouse-epcis.sql), or mount it
-- into the server image's /docker-entrypoint-initdb.d/. Replace the password (or use
-- IDENTIFIED WITH sha256_hash). Not yet run against a server: the development machines have no
-- Docker engine (deploy/README.md); the embedded store enforces the same caps as session settings.

-- readonly = 1 CONST: no SET, no per-query SETTINGS, no DDL, no temporary tables, no INSERT, no table
-- functions. The caps are the embedded defaults (genealogy/settings.py epcis_*); MAX keeps a session
-- from raising them, CONST from changing them at all. A query over a cap fails with ClickHouse's own
-- error (TIMEOUT_EXCEEDED, MEMORY_LIMIT_EXCEEDED, TOO_MANY_ROWS_OR_BYTES ...), which the service
-- answers as the standard's 413 QueryTooComplexException / QueryTooLargeException.
CREATE SETTINGS PROFILE IF NOT EXISTS genealogy_epcis SETTINGS
    readonly = 1 CONST,
    allow_ddl = 0 CONST,
    allow_introspection_functions = 0 CONST,
    max_execution_time = 10 MAX 10,
    timeout_overflow_mode = 'throw' CONST,
    max_memory_usage = 1073741824 MAX 1073741824,
    max_result_rows = 10000 MAX 10000,
    max_result_bytes = 268435456 MAX 268435456,
    result_overflow_mode = 'throw' CONST,
    read_overflow_mode = 'throw' CONST,
    max_threads = 2 MAX 2,
    max_concurrent_queries_for_user = 8 MAX 8;

CREATE USER IF NOT EXISTS epcis IDENTIFIED WITH sha256_password BY 'change-me'
    DEFAULT DATABASE default
    SETTINGS PROFILE 'genealogy_epcis';

-- Only SELECT, only the events table the query interface reads (sinks/epcis_query.py).
REVOKE ALL ON *.* FROM epcis;
GRANT SELECT ON default.epcis_events TO epcis;
