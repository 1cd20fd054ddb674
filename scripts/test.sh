#!/usr/bin/env bash
# Install, build, and run the whole test suite: pg_regress and isolation
# specs (make installcheck) in a throwaway cluster started with the library
# preloaded, as in production, then the TAP tests in t/, a short fuzzing
# run (fuzz/), the reference backend's tests (examples/backend/) and the
# Debian package's proof (scripts/package.sh).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$here/scripts/deps.sh"
cd "$here"
rm -rf results output_iso regression.diffs regression.out

# venv_opts (deps.sh): the library preloaded, from PG_CONFIG's copy
status=0
pg_virtualenv -t "${venv_opts[@]}" \
    make -s installcheck PG_CONFIG="$PG_CONFIG" > regression.log 2>&1 || status=$?
grep -E '^(ok|not ok|test |     |=+|\s*All|\s*[0-9]+ of)' regression.log | grep -v ' LOG: ' || true
passed=$(grep -cE '\.\.\. +ok|^ok ' regression.log || true)
failed=$(grep -cE '\.\.\. +FAILED|^not ok ' regression.log || true)
for d in regression.diffs output_iso/regression.diffs; do
    [ -s "$d" ] && { echo "---- $d"; cat "$d"; }
done
[ "$status" -eq 0 ] || tail -n 40 regression.log

tap_status=0
bash scripts/tap.sh > tap.log 2>&1 || tap_status=$?
grep -E '^(t/|All tests|Files=|Result:)|Failed test' tap.log || true
tap_total=$(sed -n 's/^Files=[0-9]*, Tests=\([0-9]*\),.*/\1/p' tap.log)
tap_failed=$(grep -c '^not ok' tap.log || true)
if [ "$tap_status" -ne 0 ]; then
    tail -n 60 tap.log
    [ "$tap_failed" -gt 0 ] || tap_failed=1
    status=1
fi
passed=$((passed + ${tap_total:-0} - tap_failed))
failed=$((failed + tap_failed))

# a short fuzzing run of the codec and validators (ASan + UBSan)
if make -s -C fuzz run > fuzz.log 2>&1; then
    grep -E '^Done [0-9]+ runs' fuzz.log || true
    passed=$((passed + 1))
else
    tail -n 40 fuzz.log
    failed=$((failed + 1))
    status=1
fi

# the reference backend's HTTP and headless Chromium tests, one count each
backend_status=0
bash examples/backend/tests/run.sh > backend.log 2>&1 || backend_status=$?
grep -E '\.\.\. (ok|FAIL|ERROR)$|^Ran [0-9]+ tests' backend.log || true
backend_passed=$(grep -cE '\.\.\. ok$' backend.log || true)
backend_failed=$(grep -cE '\.\.\. (FAIL|ERROR)$' backend.log || true)
if [ "$backend_status" -ne 0 ]; then
    sed -n '/^======/,/^Ran [0-9]/p' backend.log   # unittest's failures
    tail -n 30 backend.log
    [ "$backend_failed" -gt 0 ] || backend_failed=1
    status=1
fi
passed=$((passed + backend_passed))
failed=$((failed + backend_failed))

# The Debian package and the PGXN metadata (scripts/package.sh, which runs
# alone too).  It installs the package into the system PostgreSQL with
# dpkg -i and purges it, then puts back the files deps.sh's `make install`
# had left there: so it runs last, after every test that needs that
# install, and leaves the system as deps.sh set it up.  With PG_CONFIG
# naming a private copy this run must not touch the system's PostgreSQL,
# so it is skipped.
skipped=0
if [ "$("$PG_CONFIG" --pkglibdir)" != /usr/lib/postgresql/15/lib ]; then
    echo "skipped: the Debian package proof (PG_CONFIG is a private copy; run scripts/package.sh alone)"
    skipped=1
else
    package_status=0
    bash scripts/package.sh > package.log 2>&1 || package_status=$?
    grep -E '^(ok|not ok|    )' package.log || true
    package_passed=0
    package_failed=1
    if [[ "$(tail -n 1 package.log)" =~ ^([0-9]+)\ passed,\ ([0-9]+)\ failed$ ]]; then
        package_passed=${BASH_REMATCH[1]}
        package_failed=${BASH_REMATCH[2]}
    fi
    if [ "$package_status" -ne 0 ]; then
        [ "$package_failed" -gt 0 ] || { tail -n 40 package.log; package_failed=1; }
        status=1
    fi
    passed=$((passed + package_passed))
    failed=$((failed + package_failed))
fi
echo "$passed passed, $failed failed$([ "$skipped" -eq 0 ] || echo ", $skipped skipped")"
exit "$status"
