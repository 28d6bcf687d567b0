#!/bin/bash
# The pipeline's own ClickHouse user, created on the server's first start (the entrypoint runs
# /docker-entrypoint-initdb.d/* only while the data volume is empty).
#
# genealogy_sink is what `genealogy serve` connects as: the sink INSERTs, and in the same process
# the read model SELECTs, reprocess deletes corrected edges (ALTER DELETE / DELETE) and empties its
# scratch tables (TRUNCATE), and the idempotent DDL runs at every start (CREATE TABLE / VIEW). All
# of it on the pipeline's database only: no DROP, no other database, no users, no system tables.
# Analysts connect as genealogy_analyst (SELECT only; its grants are a script of their own here).
set -euo pipefail
: "${GENEALOGY_SINK_PASSWORD:?GENEALOGY_SINK_PASSWORD is not set}"
db="${CLICKHOUSE_DB:-default}"
# URL-safe characters only: the password also goes into GENEALOGY_CLICKHOUSE_DSN unencoded, and into
# the SQL below as a literal (so no quote or backslash can end it). `openssl rand -hex 24` makes one.
if [[ ! "${GENEALOGY_SINK_PASSWORD}" =~ ^[A-Za-z0-9._~-]{16,}$ ]]; then
  echo "GENEALOGY_SINK_PASSWORD: use at least 16 of A-Z a-z 0-9 . _ ~ - (e.g. openssl rand -hex 24)" >&2
  exit 1
fi
clickhouse client --user "${CLICKHOUSE_USER}" --password "${CLICKHOUSE_PASSWORD}" --multiquery <<SQL
CREATE USER IF NOT EXISTS genealogy_sink IDENTIFIED WITH sha256_password BY '${GENEALOGY_SINK_PASSWORD}';
GRANT SELECT, INSERT, ALTER DELETE, TRUNCATE, CREATE TABLE, CREATE VIEW ON \`${db}\`.* TO genealogy_sink;
SQL
