#!/usr/bin/env bash
# A/B of apikey_create on a 1.2 and a 1.3 schema under the same (current)
# library, in one throwaway cluster: 6 rounds of 5 000 creates in each,
# alternating which goes first, each round after a CHECKPOINT.  Prints the
# 1.3/1.2 time ratio per round (> 1: 1.3 slower).  Run after
# `scripts/deps.sh` has installed the library:
#
#   pg_virtualenv -o shared_preload_libraries=flowella_apikey -o shared_buffers=1GB \
#       bash bench/ab_versions.sh
set -euo pipefail
owner=11111111-1111-4111-8111-111111111111
for v in 1.2 1.3; do
  db=v${v/./_}
  createdb $db
  psql -qX -d $db >/dev/null <<SQL
SET client_min_messages = warning;
CREATE EXTENSION flowella_apikey VERSION '$v';
SELECT flowella.plan_set('pro', ARRAY['messages:send'], true);
CREATE TABLE orgs AS SELECT i, flowella.org_create('org ' || i, 'pro', '$owner') AS org_id FROM generate_series(0, 99) i;
SQL
done
run() { s=$(date +%s.%N); psql -qX -d $1 >/dev/null <<SQL
SET client_min_messages = warning;
BEGIN; SELECT flowella.set_actor('$owner') \gset
SELECT count(*) FROM generate_series(1, 5000) g(i) JOIN orgs o ON o.i = g.i % 100, LATERAL flowella.apikey_create(o.org_id, 'k' || g.i, ARRAY['messages:send']) k;
COMMIT;
SQL
e=$(date +%s.%N); echo "$e - $s" | bc -l; }
for r in 1 2 3 4 5 6; do
  psql -qX -c CHECKPOINT >/dev/null
  if [ $((r%2)) = 1 ]; then a=$(run v1_2); b=$(run v1_3); else b=$(run v1_3); a=$(run v1_2); fi
  printf "round %d: 1.2 schema %.2f s, 1.3 schema %.2f s, ratio %.2f\n" $r $a $b $(echo "$b / $a" | bc -l)
done
