#!/usr/bin/env bash
# Single-client latency of verify's paths against the bare key lookup, in
# one throwaway cluster: with one client nothing waits on a lock or a
# shared cache line, so what differs between these is work per call, and
# what differs from bench/usage.sh's 4-client ratios is contention.
#
#   bash bench/latency.sh                                  # about 3 minutes
#   BENCH_SECONDS=2 BENCH_ROUNDS=2 bash bench/latency.sh   # a quicker look
#
# 10 000 keys, half with an allowlist (10.0.0.0/8, 2001:db8::/32) and a
# limit of 1 000 000 a minute.  Scripts (pgbench -n -M prepared -c 1), each
# round running all of them: b the bare lookup by prefix; n2 verify of a
# key without a policy, no address; n3 the same with an address; d a key
# with a policy, no address (IP_DENIED); p its own address (VALID, one
# bucket per key and minute); e a random one of 100 000 addresses (a new
# bucket per request).  Printed: each script's median latency and its
# median per-round ratio to b.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$here/bench/ratios.sh"
bench_in_cluster "$here/bench/latency.sh" -o shared_buffers=1GB -o flowella.usage_max_buckets=1000000

secs=${BENCH_SECONDS:-4}
rounds=${BENCH_ROUNDS:-5}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

createdb lat
psql -X -q -v ON_ERROR_STOP=1 -d lat >/dev/null <<SQL
$(keys_sql)
SELECT count(flowella.apikey_set_policy(k.key_id,
                                        ARRAY['10.0.0.0/8', '2001:db8::/32']::cidr[], 1000000))
  FROM flowella.api_keys k JOIN t ON k.prefix = left(t.token, 18) WHERE t.i % 2 = 0;
COMMIT;
-- tp: tokens of keys with a policy, tn: without, each numbered 1 .. 5 000
CREATE TABLE tp AS SELECT row_number() OVER (ORDER BY i) AS i, token FROM t WHERE i % 2 = 0;
CREATE TABLE tn AS SELECT row_number() OVER (ORDER BY i) AS i, token FROM t WHERE i % 2 = 1;
CREATE UNIQUE INDEX ON tp (i);
CREATE UNIQUE INDEX ON tn (i);
VACUUM ANALYZE;
SQL

# 'messages' || chr(58) || 'send': pgbench would read ":send" as a variable
scope="'messages' || chr(58) || 'send'"
cat > "$work/b.sql" <<SQL
\set i random(1, 5000)
SELECT k.key_id, k.secret_hash FROM tp t JOIN flowella.api_keys k ON k.prefix = left(t.token, 18) WHERE t.i = :i;
SQL
cat > "$work/n2.sql" <<SQL
\set i random(1, 5000)
SELECT * FROM flowella.apikey_verify((SELECT token FROM tn WHERE i = :i), $scope);
SQL
cat > "$work/n3.sql" <<SQL
\set i random(1, 5000)
SELECT * FROM flowella.apikey_verify((SELECT token FROM tn WHERE i = :i), $scope, '10.0.0.0'::inet + :i);
SQL
cat > "$work/d.sql" <<SQL
\set i random(1, 5000)
SELECT * FROM flowella.apikey_verify((SELECT token FROM tp WHERE i = :i), $scope);
SQL
cat > "$work/p.sql" <<SQL
\set i random(1, 5000)
SELECT * FROM flowella.apikey_verify((SELECT token FROM tp WHERE i = :i), $scope, '10.0.0.0'::inet + :i);
SQL
cat > "$work/e.sql" <<SQL
\set i random(1, 5000)
\set ip random(1, 100000)
SELECT * FROM flowella.apikey_verify((SELECT token FROM tp WHERE i = :i), $scope, '10.0.0.0'::inet + :ip);
SQL

echo "machine: $(nproc) cores; PostgreSQL $(psql -XAtc 'show server_version'); pgbench -n -M prepared -c 1 -T $secs; $rounds rounds"
scripts=(b n2 n3 d p e)
declare -A lat
for r in $(seq 1 "$rounds"); do
    line="round $r:"
    for s in "${scripts[@]}"; do
        l=$(pgbench -n -M prepared -c 1 -T "$secs" -f "$work/$s.sql" lat 2>/dev/null |
            sed -n 's/^latency average = \([0-9.]*\) ms/\1/p')
        lat[$s]="${lat[$s]:-} $l"
        line="$line $s ${l} ms"
    done
    echo "$line"
done
for s in "${scripts[@]}"; do
    # speed relative to b: b's latency over this script's, per round
    read -r -a mine <<<"${lat[$s]}"
    read -r -a base <<<"${lat[b]}"
    echo "$s: median latency $(median "${mine[@]}") ms; b / $s = $(ratio_median base mine)"
done
