#!/usr/bin/env bash
# Build the Debian package postgresql-15-flowella-apikey (make deb): runs
# dpkg-buildpackage -us -uc -b in a copy of the source tree under build/deb/,
# so that the working tree keeps no build artefacts and the .deb, .changes
# and .buildinfo land in build/deb/ (the copy's parent), not in the clone's
# parent directory; the source package (.dsc) lands there too.  The build
# runs the regression suite against the files it is packaging (debian/rules,
# dh_pgxs_test) unless DEB_BUILD_OPTIONS has nocheck.  Expects the build
# dependencies of debian/control (scripts/deps.sh installs them).  Prints
# the .deb's path last.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
version=$(dpkg-parsechangelog -S Version)
out="$here/build/deb"
src="$out/flowella-apikey-$version"
rm -rf "$out"
mkdir -p "$src"
# The files of the working tree that git does not ignore (tracked, and new
# ones not yet added); without git, everything but build/.
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files -z --cached --others --exclude-standard |
        while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
        tar -c --null -T - | tar -x -C "$src"
else
    tar -c --exclude=./build --exclude=./.git . | tar -x -C "$src"
fi
# The source package too (.dsc and the native .tar.xz), from the copy while
# it is pristine: lintian checks the source (debian/copyright, control,
# tests) only there.
if ! (cd "$out" && dpkg-source -b "$(basename "$src")") > "$out/source.log" 2>&1; then
    cat "$out/source.log"
    exit 1
fi
if ! (cd "$src" && dpkg-buildpackage -us -uc -b) > "$out/build.log" 2>&1; then
    tail -n 60 "$out/build.log"
    echo "dpkg-buildpackage failed; the whole log: $out/build.log" >&2
    exit 1
fi
deb=$(ls "$out"/postgresql-*-flowella-apikey_"$version"_*.deb)
echo "$deb"
