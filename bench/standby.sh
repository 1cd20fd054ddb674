#!/usr/bin/env bash
# Verify throughput on a hot standby against its primary (issue 12), in two
# throwaway clusters made here: a primary and a streaming standby from its
# pg_basebackup, both with shared_preload_libraries = flowella_apikey, on
# Unix sockets in a temporary directory (no TCP port is opened).
#
#   bash bench/standby.sh                                  # about 2 minutes
#   BENCH_SECONDS=4 BENCH_ROUNDS=3 bash bench/standby.sh   # a quicker look
#
# 10 000 keys, each with an allowlist and a limit of 1 000 000 requests a
# minute (as bench/usage.sh), their tokens in table t.  Each round runs
# pgbench -n -M prepared -c 4 -j 2 against each server in turn (the order
# alternates from round to round), first (v) apikey_verify(token, scope,
# client_ip), then (b) the bare key lookup by prefix; the figure is the
# median over the rounds of each round's standby/primary TPS ratio.  Only
# one server is loaded at a time.  Both count every request: the primary
# into its usage table (flushed every 60 s), the standby in its shared
# memory, from where its usage worker hands the counts to the primary
# (flowella.usage_primary_conninfo, as a role granted
# flowella_apikey_replica), so verify does the same work on both.
#
# PG_CONFIG names a PostgreSQL where flowella_apikey is already installed
# (e.g. a private copy, as scripts/valgrind.sh makes); without it,
# scripts/deps.sh builds and installs into the system's PostgreSQL 15.  The
# sockets are on ports BENCH_PORT and BENCH_PORT + 1 (default 5441).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${BENCH_INSIDE:-}" ]; then
    if [ -z "${PG_CONFIG:-}" ]; then
        source "$here/scripts/deps.sh"
    fi
    export BENCH_INSIDE=1 PG_CONFIG="${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}"
    # initdb refuses root: run as the postgres OS user
    if [ "$(id -u)" -eq 0 ]; then
        exec runuser -u postgres -- env BENCH_INSIDE=1 PG_CONFIG="$PG_CONFIG" \
            BENCH_SECONDS="${BENCH_SECONDS:-}" BENCH_ROUNDS="${BENCH_ROUNDS:-}" \
            BENCH_PORT="${BENCH_PORT:-}" bash "$here/bench/standby.sh"
    fi
    exec bash "$here/bench/standby.sh"
fi

secs=${BENCH_SECONDS:-6}
rounds=${BENCH_ROUNDS:-5}
port=${BENCH_PORT:-5441}
bin=$("$PG_CONFIG" --bindir)
export PATH="$bin:$PATH"

work=$(mktemp -d /tmp/flowella_bench_standby.XXXXXX)
primary="$work/primary"
standby="$work/standby"
cleanup() {
    for d in "$standby" "$primary"; do
        [ -f "$d/postmaster.pid" ] && pg_ctl -D "$d" -m immediate stop >/dev/null 2>&1 || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

p_port=$port
s_port=$((port + 1))
psql_p() { psql -X -q -v ON_ERROR_STOP=1 -h "$work" -p "$p_port" "$@"; }
psql_s() { psql -X -q -v ON_ERROR_STOP=1 -h "$work" -p "$s_port" "$@"; }
source "$here/bench/ratios.sh"
run() {   # port script [seconds] -> TPS
    pgbench -n -M prepared -c 4 -j 2 -T "${3:-$secs}" -h "$work" -p "$1" -f "$work/$2.sql" bench \
        2>/dev/null | sed -n 's/^tps = \([0-9.]*\) .*/\1/p'
}

# ------------------------------------------------------------------ primary
initdb -D "$primary" -A trust -N >/dev/null
cat >> "$primary/postgresql.conf" <<CONF
listen_addresses = ''
unix_socket_directories = '$work'
port = $p_port
shared_preload_libraries = 'flowella_apikey'
max_connections = 50
shared_buffers = 1GB
fsync = off
flowella.usage_max_buckets = 1000000
flowella.usage_flush_interval = 60
CONF
pg_ctl -D "$primary" -l "$work/primary.log" -w start >/dev/null

echo "machine: $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB; PostgreSQL $(psql_p -At -d postgres -c 'show server_version')"
echo "pgbench -n -M prepared -c 4 -j 2 -T $secs; $rounds rounds; primary and streaming hot standby on one machine"

createdb -h "$work" -p "$p_port" bench
psql_p -d bench >/dev/null <<SQL
$(keys_sql)
SELECT count(flowella.apikey_set_policy(k.key_id,
                                        ARRAY['10.0.0.0/8', '2001:db8::/32']::cidr[], 1000000))
  FROM flowella.api_keys k;
COMMIT;
CREATE ROLE forwarder LOGIN IN ROLE flowella_apikey_replica;
VACUUM ANALYZE;
CHECKPOINT;
SQL

# ------------------------------------------------------------------ standby
pg_basebackup -h "$work" -p "$p_port" -D "$standby" -X stream -c fast -R
cat >> "$standby/postgresql.conf" <<CONF
port = $s_port
hot_standby = on
flowella.usage_primary_conninfo = 'host=$work port=$p_port user=forwarder'
CONF
pg_ctl -D "$standby" -l "$work/standby.log" -w start >/dev/null
lsn=$(psql_p -At -d postgres -c 'SELECT pg_current_wal_lsn()')
for _ in $(seq 1 600); do
    [ "$(psql_s -At -d postgres -c "SELECT pg_last_wal_replay_lsn() >= '$lsn'")" = t ] && break
    sleep 0.1
done
echo "standby: in recovery $(psql_s -At -d bench -c 'SELECT pg_is_in_recovery()'), keys $(psql_s -At -d bench -c 'SELECT count(*) FROM flowella.api_keys'), streaming $(psql_p -At -d postgres -c "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")"

cat > "$work/v.sql" <<'SQL'
\set i random(1, 10000)
\set ip random(1, 100000)
SELECT * FROM flowella.apikey_verify((SELECT token FROM t WHERE i = :i), 'messages' || chr(58) || 'send', '10.0.0.0'::inet + :ip);
SQL
cat > "$work/b.sql" <<'SQL'
\set i random(1, 10000)
SELECT k.key_id, k.secret_hash FROM t JOIN flowella.api_keys k ON k.prefix = left(t.token, 18) WHERE t.i = :i;
SQL

# both answer VALID before anything is measured
for f in psql_p psql_s; do
    code=$($f -At -d bench -c "SELECT v.code FROM t, flowella.apikey_verify(t.token, 'messages:send', '10.1.2.3') v WHERE t.i = 1")
    [ "$code" = VALID ] || { echo "verify answered $code" >&2; exit 1; }
done
# warm both caches
run "$p_port" v 2 >/dev/null; run "$s_port" v 2 >/dev/null

vp=(); vs=(); bp=(); bs=()
for r in $(seq 1 "$rounds"); do
    if [ $((r % 2)) -eq 1 ]; then order="p s"; else order="s p"; fi
    for who in $order; do
        if [ "$who" = p ]; then
            vp+=("$(run "$p_port" v)"); bp+=("$(run "$p_port" b)")
        else
            vs+=("$(run "$s_port" v)"); bs+=("$(run "$s_port" b)")
        fi
    done
    echo "round $r ($order): verify primary ${vp[-1]}  standby ${vs[-1]}; bare lookup primary ${bp[-1]}  standby ${bs[-1]} TPS"
done
echo "(v) verify on the standby / on the primary = $(ratio_median vs vp)"
echo "(b) bare lookup on the standby / on the primary = $(ratio_median bs bp)"
# Every request counted on either server reaches the primary's usage table:
# flush both now (interval 1 s) and compare.
for d in "$primary" "$standby"; do
    echo "flowella.usage_flush_interval = 1" >> "$d/postgresql.conf"
    pg_ctl -D "$d" reload >/dev/null
done
for _ in $(seq 1 1200); do
    [ "$(psql_s -At -d bench -c 'SELECT requests_pending = 0 FROM flowella.usage_stats()')" = t ] &&
        [ "$(psql_p -At -d bench -c 'SELECT requests_pending = 0 FROM flowella.usage_stats()')" = t ] && break
    sleep 0.1
done
counted_p=$(psql_p -At -d bench -c 'SELECT requests_counted FROM flowella.usage_stats()')
counted_s=$(psql_s -At -d bench -c 'SELECT requests_counted FROM flowella.usage_stats()')
in_table=$(psql_p -At -d bench -c 'SELECT coalesce(sum(requests), 0) FROM flowella.api_key_usage')
echo "requests counted: primary $counted_p, standby $counted_s; in the primary's api_key_usage: $in_table   (target: $((counted_p + counted_s)))"
