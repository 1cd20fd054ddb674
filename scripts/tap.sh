#!/usr/bin/env bash
# Run the TAP tests in t/ (PostgreSQL::Test::Cluster from the PGXS install).
# initdb refuses root, so as root they run as the postgres OS user, in a
# scratch copy of t/ that user may write to.  Arguments name the tests to
# run (e.g. t/006_upgrade.pl); by default all of t/.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# PG_CONFIG may name a private copy of PostgreSQL (as scripts/valgrind.sh
# makes one); by default the system's.
pg_config="${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}"
bindir=$("$pg_config" --bindir)
pgxs=$(dirname "$(dirname "$("$pg_config" --pgxs)")")
work=$(mktemp -d /tmp/flowella_tap.XXXXXX)
cp -r "$here/t" "$work/"
# t/015 runs the SQL the README prints
cp "$here/README.md" "$work/"
run=()
if [ "$(id -u)" -eq 0 ]; then
    chown -R postgres: "$work"
    run=(runuser -u postgres --)
fi
cd "$work"
if [ "$#" -gt 0 ]; then tests=("$@"); else tests=(t/*.pl); fi
status=0
"${run[@]}" env PATH="$bindir:$PATH" TESTDIR="$work" PG_REGRESS="$pgxs/test/regress/pg_regress" \
    prove -I "$pgxs/test/perl" -I "$work/t" "${tests[@]}" || status=$?
if [ "$status" -ne 0 ]; then
    tail -n 50 "$work"/tmp_check/log/regress_log_* 2>/dev/null || true
fi
[ -n "${KEEP_TAP:-}" ] || rm -rf "$work"; echo "tap dir $work"
exit "$status"
