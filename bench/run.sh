#!/usr/bin/env bash
# Benchmark of apikey_verify and apikey_create against a bare index lookup and
# a hand-written plpgsql + pgcrypto version, in one throwaway cluster.
# Prints TPS and ratios; timings are noisy, so read the ratios, not the TPS.
#
#   bash bench/run.sh            # build, install, run (about 8 minutes)
#   BENCH_SECONDS=3 BENCH_ROUNDS=3 bash bench/run.sh   # a quicker look
#
# The machine this was written on swings by a third between two runs of the
# same script a minute apart, so every comparison is made round by round
# (the scripts of a round run back to back) and the median over the rounds
# of each round's ratio is what counts.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$here/bench/ratios.sh"
bench_in_cluster "$here/bench/run.sh" -o max_connections=50 -o shared_buffers=1GB

cd "$here/bench"
secs=${BENCH_SECONDS:-6}
rounds=${BENCH_ROUNDS:-5}
owner=11111111-1111-4111-8111-111111111111
psql_q() { psql -X -q -v ON_ERROR_STOP=1 "$@"; }

setup_db() {   # db
    createdb "$1"
    psql_q -d "$1" >/dev/null <<SQL
SET client_min_messages = warning;
CREATE EXTENSION pgcrypto;
CREATE EXTENSION flowella_apikey;
SELECT flowella.plan_set('pro', ARRAY['messages:send','messages:read','analytics:read'], true);
CREATE TABLE orgs AS
  SELECT i, flowella.org_create('org ' || i, 'pro', '$owner') AS org_id
    FROM generate_series(0, 999) i;
CREATE TABLE t (i int PRIMARY KEY, token text NOT NULL);
SQL
    psql_q -d "$1" -f baseline.sql
}

# create n keys with function fn, tokens of the first 10000 into t if asked
create_keys() {   # db fn n offset keep
    psql_q -d "$1" <<SQL
SET client_min_messages = warning;
BEGIN;
SELECT flowella.set_actor('$owner') \gset
CREATE TEMP TABLE new_keys AS
  SELECT g.i, k.token
    FROM generate_series($4 + 1, $4 + $3) g(i)
    JOIN orgs o ON o.i = g.i % 1000,
         LATERAL $2(o.org_id, 'key ' || g.i, ARRAY['messages:send']) k;
INSERT INTO t SELECT i - $4, token FROM new_keys WHERE $5 AND i - $4 <= 10000;
COMMIT;
SQL
}

timed() {   # prints seconds taken by the command
    local s e
    s=$(date +%s.%N); "$@" >/dev/null; e=$(date +%s.%N)
    echo "$e - $s" | bc -l
}

tps() {   # db script
    pgbench -n -M prepared -c 4 -j 2 -T "$secs" -f "$2" "$1" 2>/dev/null |
        sed -n 's/^tps = \([0-9.]*\) .*/\1/p'
}


echo "machine: $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB, $(uname -r); PostgreSQL $(psql -XAtc 'show server_version')"
echo "pgbench -M prepared -c 4 -j 2 -T $secs; $rounds rounds of A B C D"
echo

setup_db bench
echo "== creating 100 000 keys: 5 pairs of 10 000 by the plpgsql twin and by apikey_create"
# Each pair times both, in alternating order, each after a CHECKPOINT so
# that no segment pays for another's dirty buffers; the median of the five
# pair ratios shrugs off one disturbed segment.
pair_ratios=()
ctotal=0; dtotal=0
for p in 0 1 2 3 4; do
    keep=false; [ "$p" -eq 0 ] && keep=true
    if [ $((p % 2)) -eq 0 ]; then
        psql_q -d bench -c CHECKPOINT; c=$(timed create_keys bench bench.apikey_create 10000 $((100000 + p * 10000)) false)
        psql_q -d bench -c CHECKPOINT; d=$(timed create_keys bench flowella.apikey_create 10000 $((p * 10000)) $keep)
    else
        psql_q -d bench -c CHECKPOINT; d=$(timed create_keys bench flowella.apikey_create 10000 $((p * 10000)) $keep)
        psql_q -d bench -c CHECKPOINT; c=$(timed create_keys bench bench.apikey_create 10000 $((100000 + p * 10000)) false)
    fi
    pair_ratios+=("$(echo "scale=2; $c / $d" | bc -l)")
    ctotal=$(echo "$ctotal + $c" | bc -l); dtotal=$(echo "$dtotal + $d" | bc -l)
    printf "pair %d: plpgsql %.2f s, apikey_create %.2f s, ratio %s\n" "$p" "$c" "$d" "${pair_ratios[-1]}"
done
printf "plpgsql create : %.0f keys/s\n" "$(echo "50000 / $ctotal" | bc -l)"
printf "apikey_create  : %.0f keys/s\n" "$(echo "50000 / $dtotal" | bc -l)"
create_ratio=$(median "${pair_ratios[@]}")
echo "apikey_create speed / plpgsql create speed = $create_ratio (median of pairs; $(echo "scale=2; $ctotal / $dtotal" | bc -l) over all)   (target >= 1.5)"
psql_q -d bench -c "VACUUM ANALYZE"
echo "keys in table: $(psql -XAt -d bench -c 'SELECT count(*) FROM flowella.api_keys')"
echo

echo "== create in an empty organisation vs one with 100 000 active keys"
# SPEC: every per-key call costs the same at 100 000 active keys as in an
# empty organisation.  Each round creates 5 000 keys in a new, empty org and
# 5 000 in the big one (order alternating), with apikey_create and with the
# twin; ratios are of speeds within a round.
createdb cliff
psql_q -d cliff >/dev/null <<SQL
SET client_min_messages = warning;
CREATE EXTENSION pgcrypto;
CREATE EXTENSION flowella_apikey;
SELECT flowella.plan_set('pro', ARRAY['messages:send','messages:read','analytics:read'], true);
CREATE TABLE big AS SELECT flowella.org_create('big', 'pro', '$owner') AS org_id;
-- 100 000 active keys: a superuser INSERT without actor (the restore path)
INSERT INTO flowella.api_keys (org_id, label, prefix, secret_hash, mode, created_by)
SELECT (SELECT org_id FROM big), 'filler', 'flwl_live_' || lpad(to_hex(g.i), 8, 'x'),
       gen_random_bytes(32), 'live', '$owner'
  FROM generate_series(1, 100000) g(i);
VACUUM ANALYZE;
SQL
psql_q -d cliff -f baseline.sql
create_in() {   # fn org n
    psql_q -d cliff <<SQL
SET client_min_messages = warning;
BEGIN;
SELECT flowella.set_actor('$owner') \gset
SELECT count(*) FROM generate_series(1, $3) g(i), LATERAL $1('$2', 'key ' || g.i, ARRAY['messages:send']) k;
COMMIT;
SQL
}
ours_ratio=(); twin_ratio=(); ours_big=()
for r in $(seq 1 "$rounds"); do
    empty=$(psql -XAtq -d cliff -c "SELECT flowella.org_create('empty $r', 'pro', '$owner')")
    empty2=$(psql -XAtq -d cliff -c "SELECT flowella.org_create('empty twin $r', 'pro', '$owner')")
    big=$(psql -XAtq -d cliff -c "SELECT org_id FROM big")
    psql_q -d cliff -c CHECKPOINT
    if [ $((r % 2)) -eq 1 ]; then
        e=$(timed create_in flowella.apikey_create "$empty" 5000); b=$(timed create_in flowella.apikey_create "$big" 5000)
        te=$(timed create_in bench.apikey_create "$empty2" 5000); tb=$(timed create_in bench.apikey_create "$big" 5000)
    else
        tb=$(timed create_in bench.apikey_create "$big" 5000); te=$(timed create_in bench.apikey_create "$empty2" 5000)
        b=$(timed create_in flowella.apikey_create "$big" 5000); e=$(timed create_in flowella.apikey_create "$empty" 5000)
    fi
    ours_ratio+=("$(echo "scale=2; $e / $b" | bc -l)")
    twin_ratio+=("$(echo "scale=2; $tb / $b" | bc -l)")
    ours_big+=("$(printf "%.0f" "$(echo "5000 / $b" | bc -l)")")
    printf "round %d: apikey_create empty %.2f s, big %.2f s; twin empty %.2f s, big %.2f s\n" "$r" "$e" "$b" "$te" "$tb"
done
echo "apikey_create keys/s in the big org: ${ours_big[*]}"
echo "create speed at 100 000 active keys / in an empty org = $(median "${ours_ratio[@]}")   (rounds: ${ours_ratio[*]})   (target >= 0.9)"
echo "apikey_create / plpgsql twin, both at 100 000 active keys = $(median "${twin_ratio[@]}")   (rounds: ${twin_ratio[*]})"
echo

echo "== verify at 100 000 keys"
a_floor=(); b_lookup=(); c_plpgsql=(); d_verify=()
for _ in $(seq 1 "$rounds"); do
    for script in a_floor b_lookup c_plpgsql d_verify; do
        declare -n runs=$script
        runs+=("$(tps bench $script.sql)")
        unset -n runs
    done
done
for script in a_floor b_lookup c_plpgsql d_verify; do
    declare -n runs=$script
    printf "%-10s median %7.0f TPS   (rounds: %s)\n" "$script" "$(median "${runs[@]}")" \
        "$(printf "%.0f " "${runs[@]}")"
    unset -n runs
done
echo "(d) / (b) = $(ratio_median d_verify b_lookup)   (target >= 0.9)"
echo "(d) / (c) = $(ratio_median d_verify c_plpgsql)   (target >= 1.4)"
echo "(b) / (a) = $(ratio_median b_lookup a_floor)"
echo

echo "== verify at 10 000 keys vs 1 000 000 keys"
setup_db small
create_keys small flowella.apikey_create 10000 0 true
psql_q -d small -c "VACUUM ANALYZE"
# filler rows up to 1 000 000 keys: a superuser INSERT without actor (the
# restore path), with random prefixes and hashes no token matches
psql_q -d bench <<'SQL'
INSERT INTO flowella.api_keys (org_id, label, prefix, secret_hash, mode, created_by)
SELECT o.org_id, 'filler', 'flwl_live_' || lpad(to_hex(g.i), 8, 'x'), gen_random_bytes(32), 'live', o.org_id
  FROM generate_series(1, 1000000 - (SELECT count(*) FROM flowella.api_keys)) g(i)
  JOIN orgs o ON o.i = g.i % 1000
ON CONFLICT DO NOTHING;
VACUUM ANALYZE flowella.api_keys;
SQL
echo "keys: small $(psql -XAt -d small -c 'SELECT count(*) FROM flowella.api_keys'), large $(psql -XAt -d bench -c 'SELECT count(*) FROM flowella.api_keys')"
sm=(); lg=()
for _ in $(seq 1 "$rounds"); do
    sm+=("$(tps small d_verify.sql)"); lg+=("$(tps bench d_verify.sql)")
done
printf "d_verify @10k  median %7.0f TPS   (rounds: %s)\n" "$(median "${sm[@]}")" "$(printf "%.0f " "${sm[@]}")"
printf "d_verify @1M   median %7.0f TPS   (rounds: %s)\n" "$(median "${lg[@]}")" "$(printf "%.0f " "${lg[@]}")"
echo "(d @1M) / (d @10k) = $(ratio_median lg sm)   (target >= 0.9)"
echo

echo "== 2 000 verifies of one hot key (flush interval 2 s)"
psql_q -c "ALTER SYSTEM SET flowella.usage_flush_interval = 2" -c "SELECT pg_reload_conf()" >/dev/null
# wait until earlier uses are written (nothing pending), then count the row
# updates the next flushes make
quiet() {
    for _ in $(seq 1 600); do
        [ "$(psql -XAt -d small -c 'SELECT pending = 0 FROM flowella.usage_stats()')" = t ] && return 0
        sleep 0.1
    done
    return 1
}
quiet || { echo "(uses still pending before the hot-key run:)";
            psql -X -d small -c 'SELECT * FROM flowella.usage_stats()' \
                 -c "SELECT pid, backend_type, wait_event, state, left(query, 60) FROM pg_stat_activity WHERE backend_type LIKE 'flowella%'"; }
before=$(psql -XAt -d small -c "SELECT rows_updated FROM flowella.usage_stats()")
psql_q -d small -c "SELECT count(*) FROM t, generate_series(1, 2000) WHERE t.i = 1 AND (flowella.apikey_verify(t.token)).valid" >/dev/null
sleep 3
quiet || echo "(last uses still pending)"
after=$(psql -XAt -d small -c "SELECT rows_updated FROM flowella.usage_stats()")
echo "row updates for 2 000 verifies of one key: $((after - before))   (target <= 1)"
