#!/usr/bin/env bash
# Prove the Debian package and the PGXN metadata (scripts/test.sh runs this;
# it runs alone too):
#   META.json against the PGXN spec, versions in step with the control file
#   (scripts/check_meta.py), then build the package (scripts/deb.sh, which
#   runs the regression suite at build time), lintian, install it with
#   dpkg -i into the system PostgreSQL 15, CREATE EXTENSION from the
#   installed files in a throwaway cluster with the library preloaded and
#   verify a key (scripts/package_proof.sql), run the package's autopkgtest
#   (debian/tests) against the installed package, and purge it.
# Prints one ok / not ok line per step and "N passed, M failed" last; exits
# non-zero if any step failed.
#
# It installs into and removes from /usr/lib/postgresql/15 and
# /usr/share/postgresql/15: files there that no package owns (a
# `make install` by scripts/deps.sh) are saved first and put back after the
# purge, so the system is left as it was.  One run at a time per machine
# (a lock).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
pkg=postgresql-15-flowella-apikey

# ---- inside the throwaway cluster (pg_virtualenv runs this script again;
# the results go to the file $2, pg_virtualenv talks on stdout)
if [ "${1:-}" = --in-cluster ]; then
    out=$(psql -X -q -f "$here/scripts/package_proof.sql")
    pid=$(sed -n 's/^postmaster_pid=//p' <<<"$out")
    {
        echo "$out" | grep -v '^postmaster_pid='
        # the library the postmaster has mapped (preloaded), to compare with
        # the package's file
        echo "mapped=$(grep -o '/[^ ]*flowella_apikey\.so' "/proc/$pid/maps" | sort -u | tr '\n' ' ')"
    } > "$2"
    exit 0
fi

cd "$here"
passed=0
failed=0
pass() { echo "ok - $*"; passed=$((passed + 1)); }
fail() { echo "not ok - $*"; failed=$((failed + 1)); }
finish() {
    echo "$passed passed, $failed failed"
    if [ "$failed" -eq 0 ]; then exit 0; else exit 1; fi
}

DEPS_PACKAGES_ONLY=1 source "$here/scripts/deps.sh"
exec 9>/tmp/flowella_apikey_package.lock
flock 9
# pg_virtualenv picks its port among the clusters of its own private list
# (5432 first), so throwaway clusters started at once on a shared machine
# can collide: this script's (the build-time suite, the proof, autopkgtest)
# take a port of 5461-5470 that no server uses.
for port in $(seq 5461 5470); do
    if [ ! -e "/var/run/postgresql/.s.PGSQL.$port" ] &&
            ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        export PGPORT=$port
        break
    fi
done
logs="$here/build/package"      # every step's log
rm -rf "$logs"
mkdir -p "$logs"
version=$(dpkg-parsechangelog -S Version)
arch=$(dpkg --print-architecture)

# ---- metadata
if /usr/bin/python3 scripts/check_meta.py > "$logs/meta.log" 2>&1 &&
        /usr/bin/python3 scripts/check_meta.py --self-test >> "$logs/meta.log" 2>&1; then
    pass "META.json valid (PGXN Meta Spec 1.0.0); META.json and debian/changelog versions = default_version"
else
    grep -v '^ok ' "$logs/meta.log" | sed 's/^/    /'
    fail "META.json / version check (scripts/check_meta.py)"
fi

# ---- build
if deb=$(bash scripts/deb.sh | tail -n 1) && [ "$deb" = "$here/build/deb/${pkg}_${version}_${arch}.deb" ]; then
    pass "dpkg-buildpackage -us -uc -b: build/deb/$(basename "$deb") (regression suite passed at build time)"
else
    tail -n 60 build/deb/source.log build/deb/build.log 2>/dev/null || true
    fail "dpkg-buildpackage (build/deb/build.log)"
    finish
fi
depends=$(dpkg-deb -f "$deb" Depends)
if [[ "$depends" == *libsodium23* && "$depends" == *"postgresql-15 "* ]]; then
    pass "Depends: $depends"
else
    fail "Depends lacks libsodium23 or postgresql-15: $depends"
fi

# ---- lintian on the binary packages, .changes, .buildinfo and the source
# package: errors and warnings fail; informational and pedantic tags
# are shown (the README says why the remaining ones are right)
changes="build/deb/flowella-apikey_${version}_${arch}.changes"
dsc="build/deb/flowella-apikey_${version}.dsc"
if lintian --info --display-info --pedantic --fail-on error,warning "$changes" "$dsc" \
        > "$logs/lintian.log" 2>&1; then
    pass "lintian: no error or warning ($(grep -c '^[EWIPX]: ' "$logs/lintian.log" || true) other tags)"
else
    fail "lintian"
fi
grep '^[EWIPX]: ' "$logs/lintian.log" | sed 's/^/    /' || true

# ---- install into the system
if dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null | grep -qv '^not-installed$'; then
    fail "$pkg is already installed: package.sh installs and purges it; remove it first (dpkg -P $pkg)"
    finish
fi
# Save the files the package will replace that no package owns, to put
# them back after the purge (the trap does it too if a step fails).
work=$(mktemp -d /tmp/flowella_package.XXXXXX)
trap 'rm -rf "$work"' EXIT
dpkg-deb --fsys-tarfile "$deb" | tar -t | sed -n 's|^\./|/|p' | grep -v '/$' |
    while read -r f; do
        if [ -e "$f" ] && ! dpkg -S "$f" >/dev/null 2>&1; then
            echo "$f"
        fi
    done > "$work/saved.list"
[ -s "$work/saved.list" ] && tar -c -P -f "$work/saved.tar" -T "$work/saved.list"
# dpkg, waiting up to 5 minutes while another apt or dpkg run holds its lock
# (a shared machine)
dpkg_wait() {
    local i
    for i in $(seq 60); do
        if dpkg "$@" > "$logs/dpkg.log" 2>&1; then return 0; fi
        grep -q 'lock' "$logs/dpkg.log" || return 1
        sleep 5
    done
    return 1
}
restore() {
    if dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null | grep -qv '^not-installed$'; then
        dpkg_wait -P "$pkg" || true
    fi
    [ -s "$work/saved.list" ] && tar -x -P -f "$work/saved.tar"
    rm -rf "$work"
}
trap restore EXIT

if dpkg_wait -i "$deb" && dpkg --verify "$pkg" >> "$logs/dpkg.log" 2>&1; then
    pass "dpkg -i $(basename "$deb") ($(grep -c . "$work/saved.list" || true) unpackaged files saved)"
else
    cat "$logs/dpkg.log"
    fail "dpkg -i"
    finish
fi

# ---- CREATE EXTENSION from the installed files, create and verify a key
so=/usr/lib/postgresql/15/lib/flowella_apikey.so
expected="extversion=$(sed -n "s/^default_version = '\(.*\)'/\1/p" flowella_apikey.control)
preloaded=flowella_apikey
token_shape=true
verify=VALID,true
verify_scope=INSUFFICIENT_SCOPE
verify_garbage=MALFORMED
verify_revoked=REVOKED
audit=member.role_changed,key.created,key.revoked
mapped=$so "
if pg_virtualenv -t -v 15 -o shared_preload_libraries=flowella_apikey \
            bash "$here/scripts/package.sh" --in-cluster "$logs/proof.out" > "$logs/proof.log" 2>&1 &&
        got=$(cat "$logs/proof.out") && [ "$got" = "$expected" ] &&
        dpkg -S "$so" | grep -q "^$pkg:"; then
    pass "installed package: CREATE EXTENSION, key created, VALID, revoked, REVOKED (library $so of $pkg)"
else
    diff <(echo "$expected") <(echo "${got:-}") || true
    cat "$logs/proof.log"
    fail "installed package: CREATE EXTENSION and verify a key"
fi

# ---- the package's autopkgtest against the installed package: autopkgtest
# runs debian/tests/control's tests on this machine (null runner) in a copy
# of the source tree, without building (-B: the package is installed).
src="build/deb/flowella-apikey-$version"
if autopkgtest -B "$src/" -- null > "$logs/autopkgtest.log" 2>&1 &&
        grep -qE '^installcheck +PASS' "$logs/autopkgtest.log"; then
    pass "autopkgtest debian/tests/installcheck (pg_buildext installcheck): $(grep -oE 'All [0-9]+ tests passed' "$logs/autopkgtest.log" | grep -oE '[0-9]+' | paste -sd+) tests passed"
else
    tail -n 80 "$logs/autopkgtest.log"
    fail "autopkgtest debian/tests"
fi

# ---- remove
if dpkg_wait -P "$pkg" && ! dpkg -S "$so" >/dev/null 2>&1; then
    pass "dpkg -P $pkg"
else
    cat "$logs/dpkg.log"
    fail "dpkg -P $pkg"
fi
restore
trap - EXIT
finish
