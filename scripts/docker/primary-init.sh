#!/bin/bash
# Runs once in the primary container's first start (docker-entrypoint-initdb.d): the roles and
# the replication access the demo needs. Passwords come from the compose environment.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<SQL
CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD '${REPLICATION_PASSWORD}';
CREATE ROLE app WITH LOGIN PASSWORD '${APP_PASSWORD}';
GRANT pg_monitor TO app;
CREATE DATABASE app OWNER app;
SELECT pg_create_physical_replication_slot('replica1');
SELECT pg_create_physical_replication_slot('replica2');
SQL
echo "host replication replicator all scram-sha-256" >> "$PGDATA/pg_hba.conf"
