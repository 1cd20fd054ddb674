#!/usr/bin/env bash
# Build the Debian package postgresql-15-flowella-apikey (make deb): runs
# dpkg-buildpackage -us -uc -b in a copy of the source tree, so that the
# working tree keeps no build artefacts; the copy, the .deb, .changes and
# .buildinfo and the source package (.dsc) end in build/deb/, not in the
# clone's parent directory.  The build runs the regression suite against
# the files it is packaging (debian/rules, dh_pgxs_test) unless
# DEB_BUILD_OPTIONS has nocheck.  Expects the build dependencies of
# debian/control (scripts/deps.sh installs them).  Prints the .deb's path
# last.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
version=$(dpkg-parsechangelog -S Version)
out="$here/build/deb"
rm -rf "$out"
mkdir -p "$out"
# The build happens in /tmp and its results move to build/deb/ at the end:
# the build-time suite's server, run as user postgres, reads the files being
# packaged, and a clone may sit where that user cannot reach (under /root).
stage=$(mktemp -d /tmp/flowella_deb.XXXXXX)
chmod 755 "$stage"
trap 'mv "$stage"/* "$out"/ 2>/dev/null; rm -rf "$stage"' EXIT
src="$stage/flowella-apikey-$version"
mkdir "$src"
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
if ! (cd "$stage" && dpkg-source -b "$(basename "$src")") > "$stage/source.log" 2>&1; then
    cat "$stage/source.log"
    exit 1
fi
if ! (cd "$src" && dpkg-buildpackage -us -uc -b) > "$stage/build.log" 2>&1; then
    tail -n 60 "$stage/build.log"
    echo "dpkg-buildpackage failed; the whole log: $out/build.log" >&2
    exit 1
fi
echo "$out/$(cd "$stage" && ls postgresql-*-flowella-apikey_"$version"_*.deb)"
