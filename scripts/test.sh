#!/usr/bin/env bash
# Install, build, and run the whole test suite (pg_regress + isolation) in a
# throwaway cluster started with the library preloaded, as in production.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$here/scripts/deps.sh"
cd "$here"
rm -rf results output_iso regression.diffs regression.out

status=0
pg_virtualenv -t -o shared_preload_libraries=flowella_apikey \
    make -s installcheck PG_CONFIG="$PG_CONFIG" > regression.log 2>&1 || status=$?
grep -E '^(ok|not ok|test |     |=+|\s*All|\s*[0-9]+ of)' regression.log | grep -v ' LOG: ' || true

passed=$(grep -cE '^ok ' regression.log || true)
failed=$(grep -cE '^not ok ' regression.log || true)
if [ "$passed" -eq 0 ] && [ "$failed" -eq 0 ]; then
    # pg_regress before 16 prints "test name ... ok"
    passed=$(grep -cE '\.\.\. ok|\.\.\.+ *ok' regression.log || true)
    failed=$(grep -cE '\.\.\. FAILED|\.\.\.+ *FAILED' regression.log || true)
fi
for d in regression.diffs output_iso/regression.diffs; do
    [ -s "$d" ] && { echo "---- $d"; cat "$d"; }
done
[ "$status" -eq 0 ] || tail -n 40 regression.log
echo "$passed passed, $failed failed"
exit "$status"
