#!/usr/bin/env bash
# Flush cost of the usage history: in one throwaway cluster, 20 000 keys
# each verified 10 times from 10 client IPs (200 000 requests, 200 000
# buckets, every request another bucket, as under issue 11's load (b)),
# nothing flushed meanwhile; then the flush is asked for and timed until
# no request and no last use is pending.  Repeated FLUSH_ROUNDS times (new
# client IPs each time).  Prints requests (= buckets) written per second
# and the rows the usage table gained.
#
#   bash bench/flush.sh                                # the build in the tree
#   PG_CONFIG=/copy/usr/lib/postgresql/15/bin/pg_config bash bench/flush.sh
#
# PG_CONFIG (default: the system's) names the PostgreSQL whose binaries
# and installed flowella_apikey are measured: a private copy (as
# scripts/valgrind.sh makes one) with another build installed compares
# builds.  Nothing is built or installed here.  FLUSH_PORT (default 5449).
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/ratios.sh"
pg_config="${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}"
bin=$("$pg_config" --bindir)
port="${FLUSH_PORT:-5449}"
rounds="${FLUSH_ROUNDS:-3}"
keys=20000
per_key=10
run=()
[ "$(id -u)" -eq 0 ] && run=(runuser -u postgres --)

work=$(mktemp -d /tmp/flowella_flush.XXXXXX)
chmod 755 "$work"
[ "$(id -u)" -eq 0 ] && chown postgres: "$work"
trap '"${run[@]}" "$bin/pg_ctl" -D "$work/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
"${run[@]}" "$bin/initdb" -D "$work/data" -A trust >/dev/null
cat >> "$work/data/postgresql.conf" <<EOF
port = $port
listen_addresses = ''
unix_socket_directories = '$work'
shared_preload_libraries = 'flowella_apikey'
shared_buffers = 512MB
max_wal_size = 4GB
flowella.usage_max_buckets = 1000000
flowella.usage_max_keys = 100000
flowella.usage_flush_interval = 60
EOF
"${run[@]}" "$bin/pg_ctl" -D "$work/data" -l "$work/log" -w start >/dev/null
psql_() { "${run[@]}" "$bin/psql" -X -q -v ON_ERROR_STOP=1 -h "$work" -p "$port" -d postgres "$@"; }

owner=11111111-1111-4111-8111-111111111111
psql_ >/dev/null <<SQL
SET client_min_messages = warning;
CREATE EXTENSION flowella_apikey;
SELECT flowella.plan_set('pro', ARRAY['messages:send'], true);
SELECT flowella.org_create('org', 'pro', '$owner') AS org \gset
CREATE TABLE t (i int PRIMARY KEY, token text NOT NULL);
BEGIN;
SELECT flowella.set_actor('$owner');
INSERT INTO t SELECT g.i, k.token FROM generate_series(1, $keys) g(i),
    LATERAL flowella.apikey_create(:'org', 'key ' || g.i) k;
COMMIT;
VACUUM ANALYZE;
SQL
echo "flowella_apikey $(psql_ -At -c "SELECT extversion FROM pg_extension WHERE extname = 'flowella_apikey'"), $keys keys, $((keys * per_key)) requests per round, each its own bucket"

table=flowella.api_key_usage
[ "$(psql_ -At -c "SELECT to_regclass('flowella.api_key_usage_log') IS NOT NULL")" = t ] &&
    table=flowella.api_key_usage_log
for r in $(seq 1 "$rounds"); do
    # back to one round a minute; the launcher reads the setting once the
    # round in progress (last uses of the previous round) has ended
    psql_ -c "ALTER SYSTEM SET flowella.usage_flush_interval = 60" -c "SELECT pg_reload_conf()" >/dev/null
    for _ in $(seq 1 600); do
        [ "$(psql_ -At -c 'SELECT pending = 0 FROM flowella.usage_stats()')" = t ] && break
        sleep 0.1
    done
    sleep 3
    written=$(psql_ -At -c "SELECT requests_written FROM flowella.usage_stats()")
    rows=$(psql_ -At -c "SELECT count(*) FROM $table")
    psql_ -At -c "SELECT count(*) FROM t, generate_series(1, $per_key) n,
        LATERAL flowella.apikey_verify(t.token, 'messages:send',
                                       '10.0.0.0'::inet + ($r * 1000000 + t.i * $per_key + n)) v" >/dev/null
    read -r pending now_written < <(psql_ -At -F ' ' -c "SELECT requests_pending, requests_written FROM flowella.usage_stats()")
    if [ "$now_written" != "$written" ]; then
        echo "round $r: a flush ran during the verifies; skipped"
        continue
    fi
    secs=$(flush_timed psql_)
    new_rows=$(( $(psql_ -At -c "SELECT count(*) FROM $table") - rows ))
    printf "round %d: %d requests flushed in %.2f s: %.0f requests/s, %d rows of %s (%.0f rows/s)\n" \
        "$r" "$pending" "$secs" "$(echo "$pending / $secs" | bc -l)" "$new_rows" "$table" \
        "$(echo "$new_rows / $secs" | bc -l)"
done
