#!/usr/bin/env bash
# The cost of the audit hash chain (1.5), in one throwaway cluster:
#
#   (a) apikey_create throughput on a 1.5 schema (every record chained:
#       the org's chain lock, a read of its last record, SHA-256) against a
#       1.4 schema (no chain) under the same library, one create per
#       transaction, pgbench -M prepared -c 4 -j 2, rounds alternating which
#       schema goes first: 1) each create in a random one of 100 orgs, 2)
#       every create in one org (its creates then commit one at a time);
#   (b) audit_verify over one org's chain of AUDIT_RECORDS records (default
#       1 000 000; written directly, chained as the trigger chains them):
#       records per second, and audit_digest's time on the same chain.
#
#   bash bench/audit.sh                                  # about 5 minutes
#   BENCH_SECONDS=3 BENCH_ROUNDS=3 bash bench/audit.sh   # a quicker look
#
# PG_CONFIG may name a private copy of PostgreSQL (scripts/deps.sh).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$here/bench/ratios.sh"
bench_in_cluster "$here/bench/audit.sh" -o max_connections=50 -o shared_buffers=1GB

cd "$here/bench"
secs=${BENCH_SECONDS:-6}
rounds=${BENCH_ROUNDS:-5}
records=${AUDIT_RECORDS:-1000000}
owner=11111111-1111-4111-8111-111111111111
work=$(mktemp -d)
psql_q() { psql -X -q -v ON_ERROR_STOP=1 "$@"; }

for v in 1.4 1.5; do
    db=v${v/./_}
    createdb "$db"
    psql_q -d "$db" >/dev/null <<SQL
SET client_min_messages = warning;
CREATE EXTENSION flowella_apikey VERSION '$v';
SELECT flowella.plan_set('pro', ARRAY['messages:send'], true);
CREATE TABLE orgs AS
  SELECT i, flowella.org_create('org ' || i, 'pro', '$owner') AS org_id
    FROM generate_series(0, 99) i;
ALTER TABLE orgs ADD PRIMARY KEY (i);
SQL
done

for w in many one; do
    if [ "$w" = many ]; then pick='\set i random(0, 99)'; else pick='\set i 0'; fi
    cat > "$work/$w.sql" <<SQL
$pick
BEGIN;
SELECT flowella.set_actor('$owner');
SELECT count(*) FROM orgs o, flowella.apikey_create(o.org_id, 'bench') k WHERE o.i = :i;
COMMIT;
SQL
done

tps() {   # db workload
    pgbench -n -M prepared -c 4 -j 2 -T "$secs" -f "$work/$2.sql" "$1" 2>/dev/null |
        sed -n 's/^tps = \([0-9.]*\) .*/\1/p'
}

echo "(a) apikey_create, pgbench -M prepared -c 4 -j 2 -T $secs; $rounds rounds"
for w in many one; do
    t14=(); t15=()
    for r in $(seq 1 "$rounds"); do
        psql_q -c CHECKPOINT
        if [ $((r % 2)) = 1 ]; then
            a=$(tps v1_4 "$w"); b=$(tps v1_5 "$w")
        else
            b=$(tps v1_5 "$w"); a=$(tps v1_4 "$w")
        fi
        t14+=("$a"); t15+=("$b")
        printf "  %-4s round %d: 1.4 schema %8.1f TPS, 1.5 schema %8.1f TPS\n" "$w" "$r" "$a" "$b"
    done
    label="random org of 100"; [ "$w" = one ] && label="all in one org"
    echo "  1.5 / 1.4 create throughput, $label: $(ratio_median t15 t14)"
done
for db in v1_4 v1_5; do
    echo "  $db: $(psql_q -At -d "$db" -c 'SELECT count(*) FROM flowella.audit_records') audit records"
done
echo "  1.5 chains verify: $(psql_q -At -d v1_5 -c \
    'SELECT bool_and(v.ok) FROM orgs o, flowella.audit_verify(o.org_id) v')"

echo "(b) audit_verify over one org's chain of $records records"
# Written directly (the trigger's chain, computed in plpgsql): an org id
# that names no organisation, so its chain starts from 32 zero bytes.
org=22222222-2222-4222-8222-222222222222
s=$(date +%s.%N)
psql_q -d v1_5 <<SQL
DO \$\$
DECLARE
	prev bytea := pg_catalog.decode(pg_catalog.repeat('00', 32), 'hex');
	e bigint;
	t timestamptz;
	d jsonb;
BEGIN
	FOR i IN 1 .. $records LOOP
		e := pg_catalog.nextval('flowella.audit_records_event_id_seq');
		t := pg_catalog.clock_timestamp();
		d := pg_catalog.jsonb_build_object('user_id', '$owner'::uuid, 'old_role', NULL::text,
										   'new_role', 'user', 'n', i);
		prev := pg_catalog.sha256(prev || pg_catalog.convert_to(pg_catalog.jsonb_build_object(
			'event_id', e, 'org_id', '$org'::uuid, 'key_id', NULL::uuid,
			'action', 'member.role_changed', 'actor_user_id', '$owner'::uuid,
			'actor_ip', NULL::text, 'trace_context', NULL::text,
			'occurred_at', pg_catalog.to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
			'details', d)::text, 'UTF8'));
		INSERT INTO flowella.audit_records VALUES
			(e, '$org', NULL, 'member.role_changed', '$owner', NULL, NULL, t, d, prev);
	END LOOP;
END
\$\$;
VACUUM ANALYZE flowella.audit_records;
SQL
e=$(date +%s.%N)
printf "  written in %.1f s\n" "$(echo "$e - $s" | bc -l)"
for r in $(seq 1 "$rounds"); do
    s=$(date +%s.%N)
    out=$(psql_q -At -d v1_5 -c "SELECT ok || ' ' || checked FROM flowella.audit_verify('$org')")
    e=$(date +%s.%N)
    sd=$(date +%s.%N)
    psql_q -At -d v1_5 -c "SELECT records FROM flowella.audit_digest('$org')" >/dev/null
    ed=$(date +%s.%N)
    el=$(echo "$e - $s" | bc -l)
    printf "  round %d: audit_verify %s in %.2f s = %.0f records/s; audit_digest %.2f s\n" \
        "$r" "$out" "$el" "$(echo "$records / $el" | bc -l)" "$(echo "$ed - $sd" | bc -l)"
done
rm -rf "$work"
