#!/usr/bin/env bash
# Install what building and testing flowella_apikey needs on Debian 12,
# then build and install the extension.  Idempotent: apt runs only when a
# package is missing.  Sourced by scripts/demo.sh and scripts/test.sh.
set -euo pipefail

# libkrb5-dev: the server's libpq/libpq-be.h includes <gssapi/gssapi.h>.
# The python3-* packages, chromium and chromium-driver: the reference
# backend (examples/backend/) and its browser test.
# The Debian package (scripts/package.sh): debhelper, postgresql-server-dev-all
# (pg_buildext's dh sequence) and postgresql-all (debian/control's
# Build-Depends), lintian, autopkgtest.
packages=(postgresql-15 postgresql-server-dev-15 libsodium-dev build-essential libipc-run-perl
          libclang-rt-14-dev libkrb5-dev
          python3-flask python3-psycopg python3-psycopg-pool python3-selenium
          chromium chromium-driver
          debhelper postgresql-server-dev-all postgresql-all lintian autopkgtest)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
        missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    # (waiting while another apt or dpkg run holds the lock: a shared machine)
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq -o DPkg::Lock::Timeout=600 \
        "${missing[@]}" >/dev/null
fi

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# PG_CONFIG may name a private copy of PostgreSQL 15 (its pg_config finds
# its directories relative to itself, as scripts/valgrind.sh's copy does):
# the extension is then built and installed there, not into the system.
export PG_CONFIG="${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}"
# Options for pg_virtualenv, which runs the system's server: preload the
# library, and when PG_CONFIG names a private copy, take the library and
# the extension's scripts from that copy (Debian's extension_destdir for
# $libdir and the extension directory, dynamic_library_path for the
# preloaded library).
venv_opts=(-o shared_preload_libraries=flowella_apikey)
if [ "$("$PG_CONFIG" --pkglibdir)" != /usr/lib/postgresql/15/lib ]; then
    venv_opts+=(-o "extension_destdir=$("$PG_CONFIG" --pkglibdir | sed 's|/usr/lib/postgresql/15/lib$||')"
                -o "dynamic_library_path=$("$PG_CONFIG" --pkglibdir):\$libdir")
fi
# DEPS_PACKAGES_ONLY=1: packages only, no build and no install into the
# system PostgreSQL (scripts/valgrind.sh installs into a private copy).
if [ -z "${DEPS_PACKAGES_ONLY:-}" ]; then
    make -s PG_CONFIG="$PG_CONFIG"
    if [ "$(id -u)" -eq 0 ] || [ -w "$("$PG_CONFIG" --pkglibdir)" ]; then
        make -s install PG_CONFIG="$PG_CONFIG" >/dev/null
    else
        sudo make -s install PG_CONFIG="$PG_CONFIG" >/dev/null
    fi
fi
