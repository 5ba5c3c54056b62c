#!/bin/bash
# A streaming replica of the `primary` service: on first start, a base backup from the primary
# (with its replication slot, standby.signal and primary_conninfo written by -R); then the
# regular postgres entrypoint. cluster_name is the replica's name, so the primary and pgrelay
# know it by that name (synchronous_standby_names, quorum reads).
set -euo pipefail
: "${REPLICA_NAME:?}" "${REPLICATION_PASSWORD:?}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  until pg_isready -h primary -p 5432 -q; do sleep 1; done
  mkdir -p "$PGDATA" && chown postgres:postgres "$PGDATA" && chmod 700 "$PGDATA"
  export PGPASSWORD=$REPLICATION_PASSWORD
  gosu postgres pg_basebackup -h primary -p 5432 -U replicator -D "$PGDATA" -R -X stream \
    -S "$REPLICA_NAME"
fi
exec docker-entrypoint.sh postgres -c hot_standby=on -c cluster_name="$REPLICA_NAME" \
  -c wal_receiver_timeout=5s
