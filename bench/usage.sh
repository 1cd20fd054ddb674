#!/usr/bin/env bash
# Benchmark of verify with a key policy and usage history (issue 11, 1.3 on),
# in one throwaway cluster, against the bare key lookup and the 1.1-style
# call measured in the same rounds:
#
#   (a) apikey_verify(token, scope, client_ip) on 10 000 keys with an IP
#       allowlist and a rate limit too high to trigger, usage recorded, each
#       key called from its own address (one bucket per key and minute, as
#       when each key has one caller): vs the bare lookup (target >= 0.9).
#       Also measured: every request from a random one of 100 000
#       addresses (a new bucket per request: (b)'s worst case on (a)'s keys);
#   (b) the same over 100 000 keys and 100 000 client IPs: no request lost
#       (the usage table against the number of calls) and verify vs the
#       bare lookup (target >= 0.85).  Two ways to put them in play: every
#       request from a random one of the IPs (a new bucket, so a new row,
#       per request: the worst case), and each key from its own IP (one
#       bucket per key and minute, as when each key has one caller);
#   (c) how long the flush of that load's pending counts takes.
#
#   bash bench/usage.sh                                  # about 10 minutes
#   BENCH_SECONDS=3 BENCH_ROUNDS=3 bash bench/usage.sh   # a quicker look
#
# The shared usage table is sized for the load (usage_max_buckets
# 1 000 000) and flushed after every run, its time measured: so no count is
# folded, and the flusher's work is measured as (c), not as noise in
# whichever run a round lands in (the 60 s rounds may still land in one).
# (b) is also given with its flush's time added to the run's.  The shared
# key cache is sized for the keys in play (verify_shared_cache_keys
# 200 000, room for the 100 000 keys of (b) in its 4-way sets).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$here/bench/ratios.sh"
bench_in_cluster "$here/bench/usage.sh" -o max_connections=50 -o shared_buffers=1GB \
    -o flowella.usage_max_buckets=1000000 -o flowella.usage_flush_interval=60 \
    -o flowella.verify_shared_cache_keys=200000

cd "$here/bench"
secs=${BENCH_SECONDS:-6}
rounds=${BENCH_ROUNDS:-5}
owner=11111111-1111-4111-8111-111111111111
work=$(mktemp -d)
psql_q() { psql -X -q -v ON_ERROR_STOP=1 "$@"; }
calls=0
# Write what is pending now, then back to one round a minute; prints the
# seconds the writing took.
psql_pol() { psql_q -d pol "$@"; }
flush_now() {
    local took
    took=$(flush_timed psql_pol)
    psql_q -c "ALTER SYSTEM SET flowella.usage_flush_interval = 60" -c "SELECT pg_reload_conf()" >/dev/null
    echo "$took"
}
run() {   # script [PGOPTIONS] -> prints TPS, the transactions made and the flush's seconds
    local out tps n
    out=$(PGOPTIONS="${2:-}" pgbench -n -M prepared -c 4 -j 2 -T "$secs" -f "$work/$1.sql" pol 2>/dev/null)
    tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' <<<"$out")
    n=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")
    echo "$tps $n $(flush_now)"
}

echo "machine: $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB; PostgreSQL $(psql -XAtc 'show server_version')"
echo "pgbench -M prepared -c 4 -j 2 -T $secs; $rounds rounds"

createdb pol
psql_q -d pol >/dev/null <<SQL
SET client_min_messages = warning;
CREATE EXTENSION flowella_apikey;
SELECT flowella.plan_set('pro', ARRAY['messages:send','messages:read'], true);
CREATE TABLE orgs AS
  SELECT i, flowella.org_create('org ' || i, 'pro', '$owner') AS org_id
    FROM generate_series(0, 999) i;
CREATE TABLE t (i int PRIMARY KEY, token text NOT NULL);
SQL
echo "== 100 000 keys, each with an allowlist (10.0.0.0/8, 2001:db8::/32) and 1 000 000 requests a minute"
for c in 0 1 2 3 4 5 6 7 8 9; do
    psql_q -d pol >/dev/null <<SQL
SET client_min_messages = warning;
BEGIN;
SELECT flowella.set_actor('$owner') \gset
INSERT INTO t
  SELECT g.i, k.token
    FROM generate_series($c * 10000 + 1, $c * 10000 + 10000) g(i)
    JOIN orgs o ON o.i = g.i % 1000,
         LATERAL flowella.apikey_create(o.org_id, 'key ' || g.i, ARRAY['messages:send']) k;
SELECT count(flowella.apikey_set_policy(k.key_id,
                                        ARRAY['10.0.0.0/8', '2001:db8::/32']::cidr[], 1000000))
  FROM flowella.api_keys k WHERE k.rate_limit_per_minute IS NULL;
COMMIT;
SQL
done
psql_q -d pol -c "VACUUM ANALYZE" >/dev/null
echo "keys with a policy: $(psql -XAt -d pol -c 'SELECT count(*) FROM flowella.api_keys WHERE allowed_ips IS NOT NULL')"

# the scripts: (b) bare lookup, (d) the 1.1-style call, (e) from a random
# client IP, (p) each key from its own IP
for n in 10000 100000; do
    cat > "$work/b$n.sql" <<SQL
\set i random(1, $n)
SELECT k.key_id, k.secret_hash FROM t JOIN flowella.api_keys k ON k.prefix = left(t.token, 18) WHERE t.i = :i;
SQL
    cat > "$work/e$n.sql" <<SQL
\set i random(1, $n)
\set ip random(1, 100000)
SELECT * FROM flowella.apikey_verify((SELECT token FROM t WHERE i = :i), 'messages' || chr(58) || 'send', '10.0.0.0'::inet + :ip);
SQL
done
for n in 10000 100000; do
    cat > "$work/p$n.sql" <<SQL
\set i random(1, $n)
SELECT * FROM flowella.apikey_verify((SELECT token FROM t WHERE i = :i), 'messages' || chr(58) || 'send', '10.0.0.0'::inet + :i);
SQL
done
cat > "$work/d10000.sql" <<'SQL'
\set i random(1, 10000)
SELECT * FROM flowella.apikey_verify((SELECT token FROM t WHERE i = :i), 'messages' || chr(58) || 'send');
SQL

# The key cache: each backend's (flowella.verify_cache_keys, default
# 10 000 keys) holds every key of (a) and a tenth of (b)'s, the shared one
# all of them.  pgbench starts new sessions every run, so the shared cache
# is what keeps them warm.  Both are also measured off for the session
# (verify_cache_keys = 0).
off="-c flowella.verify_cache_keys=0"
b10=(); p10=(); d10=(); e10=(); x10=(); b100=(); e100=(); z100=(); p100=(); f100=(); w100=(); fl100=()
for r in $(seq 1 "$rounds"); do
    read -r tps n _ < <(run b10000);  b10+=("$tps")
    read -r tps n _ < <(run p10000);  p10+=("$tps"); calls=$((calls + n))
    read -r tps n _ < <(run e10000);  e10+=("$tps"); calls=$((calls + n))
    read -r tps n _ < <(run d10000);  d10+=("$tps"); calls=$((calls + n))
    read -r tps n _ < <(run p10000 "$off"); x10+=("$tps"); calls=$((calls + n))
    read -r tps n _ < <(run b100000); b100+=("$tps")
    read -r tps n fl < <(run e100000); e100+=("$tps"); calls=$((calls + n))
    fl100+=("$fl"); w100+=("$(echo "$n / ($secs + $fl)" | bc -l)"); f100+=("$n")
    read -r tps n _ < <(run e100000 "$off"); z100+=("$tps"); calls=$((calls + n))
    read -r tps n _ < <(run p100000); p100+=("$tps"); calls=$((calls + n))
    echo "round $r: b10k ${b10[-1]}  p10k ${p10[-1]}  e10k ${e10[-1]}  d10k ${d10[-1]}  p10k-nocache ${x10[-1]}  b100k ${b100[-1]}  e100k ${e100[-1]}  e100k-nocache ${z100[-1]}  p100k ${p100[-1]} TPS"
done
echo "(a) verify with client IP, allowlist, rate limit, usage / bare lookup (10 000 keys, each from its own IP) = $(ratio_median p10 b10)   (target >= 0.9)"
echo "    the same with the key caches off = $(ratio_median x10 b10)"
echo "    every request from a random one of 100 000 IPs (a new bucket each) = $(ratio_median e10 b10)"
echo "    1.1-style verify (scope, no IP: IP_DENIED on these keys; usage counted) / bare lookup = $(ratio_median d10 b10)"
echo "(b) the same over 100 000 keys x 100 000 client IPs / bare lookup = $(ratio_median e100 b100)   (target >= 0.85)"
echo "    the same with the key caches off = $(ratio_median z100 b100)"
echo "    each key from its own IP / bare lookup = $(ratio_median p100 b100)"
echo "    with its flush's time added to the run's (requests / (run + flush)) / bare lookup = $(ratio_median w100 b100)"
echo "(c) the flush of one (b) run's counts: $(median "${fl100[@]}") s for $(median "${f100[@]}") requests (rounds: ${fl100[*]} s);"
echo "    at that load, $(echo "scale=1; $(median "${fl100[@]}") * 60 / $secs" | bc -l) s of flushing per 60 s interval"

echo "== counts"
flush_now >/dev/null
psql -X -d pol -c "SELECT buckets, requests_counted, requests_pending, requests_written, requests_folded, requests_overflowed FROM flowella.usage_stats()"
in_table=$(psql -XAt -d pol -c "SELECT coalesce(sum(requests), 0) FROM flowella.api_key_usage")
rows=$(psql -XAt -d pol -c "SELECT count(*) FROM flowella.api_key_usage")
log_rows=$(psql -XAt -d pol -c "SELECT count(*) FROM flowella.api_key_usage_log")
echo "verify calls made: $calls; requests in flowella.api_key_usage: $in_table ($rows buckets in $log_rows rows of api_key_usage_log)   (target: equal)"
rm -rf "$work"
