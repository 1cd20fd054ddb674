#!/usr/bin/env bash
# Run the pg_regress suite (REGRESS in the Makefile, then the isolation specs)
# once against a PostgreSQL server running under valgrind memcheck, with
# shared_preload_libraries = 'flowella_apikey' as in production, and report
# every valgrind error whose stacks contain a frame from this module
# (flowella_*.c/.h or flowella_apikey.so).  `make valgrind` runs it.
#
# Exit status: non-zero if pg_regress (or the isolation run) failed, or if any
# valgrind error involves our module.  Errors elsewhere (PostgreSQL, libc,
# OpenSSL...) are counted and listed, but do not fail the run.
#
# Nothing is installed into the system PostgreSQL: the script copies
# /usr/lib/postgresql/15 and /usr/share/postgresql/15 into a private tree
# (PostgreSQL finds its share and lib directories relative to the binary),
# builds a copy of the extension's sources and installs it there with DESTDIR.
#
# Environment:
#   VALGRIND_DIR=dir      working directory, kept afterwards (default: a new
#                         /tmp/flowella_valgrind.XXXXXX)
#   VALGRIND_PORT=n       server port (default 54329; the socket lives in
#                         the working directory, so nothing else can clash)
#   VALGRIND_ISOLATION=0  skip the isolation specs
#
# What memcheck can and cannot see here: Debian's postgres is not built with
# USE_VALGRIND, so palloc'd chunks inside a memory context's malloc'd block
# are not tracked one by one: an overrun into the next chunk, or a read of a
# pfree'd chunk, goes unseen.  Reads of uninitialised memory (including
# fresh palloc memory), misuse of malloc'd memory (libsodium, OpenSSL, libc),
# invalid frees and uninitialised syscall arguments are still reported.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
start_time=$SECONDS
sys_pg_config=/usr/lib/postgresql/15/bin/pg_config
port="${VALGRIND_PORT:-54329}"

# ---------------------------------------------------------------- packages
# The build and test packages (scripts/deps.sh, without its build and system
# install), plus valgrind.
DEPS_PACKAGES_ONLY=1 source "$here/scripts/deps.sh"
if ! command -v valgrind >/dev/null; then
    echo "installing: valgrind"
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq valgrind >/dev/null
fi
cd "$here"

# The server runs as an unprivileged user: initdb and postgres refuse root.
run=()
if [ "$(id -u)" -eq 0 ]; then
    run=(runuser -u postgres --)
fi

# ------------------------------------------------------------ working dir
work="${VALGRIND_DIR:-$(mktemp -d /tmp/flowella_valgrind.XXXXXX)}"
mkdir -p "$work"
work="$(cd "$work" && pwd)"
chmod 755 "$work"
echo "valgrind run directory (kept): $work"
root="$work/pg"               # private copy of PostgreSQL 15
build="$work/build"           # copy of the sources: build, pg_regress output
data="$work/data"
sock="$work/sock"
vglogs="$work/valgrind"       # one log per process: <pid>.log
rm -rf "$root" "$build" "$data" "$sock" "$vglogs"
mkdir -p "$root/usr/lib/postgresql" "$root/usr/share/postgresql" "$build" "$sock" "$vglogs"

# --------------------------------------------- private copy of PostgreSQL
# Same prefix layout as the system one, so the copied binaries resolve their
# share and pkglib directories inside $root.
cp -a /usr/lib/postgresql/15 "$root/usr/lib/postgresql/"
cp -a /usr/share/postgresql/15 "$root/usr/share/postgresql/"
# whatever version of the extension happens to be installed system-wide
rm -rf "$root"/usr/lib/postgresql/15/lib/flowella_apikey.so \
       "$root"/usr/lib/postgresql/15/lib/bitcode/flowella_apikey* \
       "$root"/usr/share/postgresql/15/extension/flowella_apikey*
bin="$root/usr/lib/postgresql/15/bin"
pkglibdir="$root/usr/lib/postgresql/15/lib"
if [ "$("$bin/pg_config" --pkglibdir)" != "$pkglibdir" ]; then
    echo "the copied pg_config does not relocate: $("$bin/pg_config" --pkglibdir)" >&2
    exit 1
fi

# ------------------------------------------------------- build and install
# A PGXS build of a copy of the sources, with the normal flags (-g -O2):
# the source tree and whatever is built in it are left alone (a VPATH build
# would take the tree's own objects when they are newer), and the stacks
# carry file:line.
cp -r "$here"/Makefile "$here"/*.c "$here"/*.h "$here"/*.control "$here"/*.sql \
    "$here"/sql "$here"/expected "$here"/specs "$build/"
make -s -C "$build" PG_CONFIG="$sys_pg_config"
make -s -C "$build" PG_CONFIG="$sys_pg_config" install DESTDIR="$root" >/dev/null
[ -f "$pkglibdir/flowella_apikey.so" ] || { echo "install into $root failed" >&2; exit 1; }

# ----------------------------------------------------------- suppressions
# PostgreSQL's src/tools/valgrind.supp (known padding bytes written to disk
# etc.) is not in Debian's binary packages: take it from the upstream
# tarball in Debian's archive, for the installed version if the archive
# still has it, else the nearest one apt knows (the file hardly changes
# between minor releases).  Cached in ~/.cache.  Plus our own
# scripts/valgrind.supp for noise of the stock (stripped) binary.
cache="${XDG_CACHE_HOME:-$HOME/.cache}/flowella_apikey"
mkdir -p "$cache"
installed=$("$bin/postgres" -V | sed -n 's/^postgres (PostgreSQL) \([0-9][0-9.]*\).*/\1/p')
candidates=("$installed")
while read -r v; do
    v="${v%%-*}"
    [[ " ${candidates[*]} " == *" $v "* ]] || candidates+=("$v")
done < <(apt-cache madison postgresql-15 2>/dev/null | awk -F'|' '{gsub(/ /, "", $2); print $2}')
pg_supp=""
for v in "${candidates[@]}"; do
    if [ -s "$cache/valgrind-$v.supp" ]; then
        pg_supp="$cache/valgrind-$v.supp"; break
    fi
    for pool in debian/pool/main debian-security/pool/updates/main; do
        url="http://deb.debian.org/$pool/p/postgresql-15/postgresql-15_$v.orig.tar.bz2"
        if curl -sfL --max-time 300 "$url" 2>/dev/null |
                tar -xjO -f - "postgresql-$v/src/tools/valgrind.supp" > "$cache/valgrind-$v.supp.tmp" 2>/dev/null &&
                [ -s "$cache/valgrind-$v.supp.tmp" ]; then
            mv "$cache/valgrind-$v.supp.tmp" "$cache/valgrind-$v.supp"
            pg_supp="$cache/valgrind-$v.supp"; break 2
        fi
        rm -f "$cache/valgrind-$v.supp.tmp"
    done
done
supp_opts=(--suppressions="$here/scripts/valgrind.supp")
if [ -n "$pg_supp" ]; then
    cp "$pg_supp" "$work/postgresql-valgrind.supp"
    supp_opts+=(--suppressions="$work/postgresql-valgrind.supp")
    echo "suppressions: PostgreSQL $(basename "$pg_supp" .supp | sed 's/valgrind-//')'s src/tools/valgrind.supp" \
         "(server is $installed) + scripts/valgrind.supp"
else
    echo "WARNING: could not fetch PostgreSQL's valgrind.supp; using scripts/valgrind.supp only" >&2
fi

# -------------------------------------------------------------- cluster
[ "$(id -u)" -ne 0 ] || chown -R postgres: "$work"
"${run[@]}" "$bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 \
    --no-sync > "$work/initdb.log"
cat >> "$data/postgresql.conf" <<EOF

# scripts/valgrind.sh
shared_preload_libraries = 'flowella_apikey'
port = $port
listen_addresses = ''
unix_socket_directories = '$sock'
# LLVM's JIT under valgrind is slow and noisy, and not our code
jit = off
fsync = off
logging_collector = off
log_line_prefix = '%m [%p] %b '
EOF

# ---------------------------------------------------- server under valgrind
# PostgreSQL's recommended invocation (src/tools/valgrind.supp, wiki):
# --trace-children follows anything the server execs; forked children (every
# backend, the usage launcher and flush workers, autovacuum...) stay under
# valgrind anyway.  Each process writes $vglogs/<pid>.log; error markers
# delimit each report for the summary below.
vgpid=""
stop_server() {
    if [ -n "$vgpid" ] && kill -0 "$vgpid" 2>/dev/null; then
        "${run[@]}" "$bin/pg_ctl" stop -D "$data" -m "${1:-fast}" -w -t 900 >/dev/null 2>&1 || true
        wait "$vgpid" 2>/dev/null || true
    fi
    vgpid=""
}
trap 'stop_server immediate' EXIT

"${run[@]}" valgrind --quiet --trace-children=yes --track-origins=yes --read-var-info=yes \
    --num-callers=40 --leak-check=no --gen-suppressions=all "${supp_opts[@]}" \
    --error-markers=VALGRINDERROR-BEGIN,VALGRINDERROR-END \
    --log-file="$vglogs/%p.log" \
    "$bin/postgres" -D "$data" > "$work/server.log" 2>&1 &
vgpid=$!

echo "starting the server under valgrind (port $port)..."
for _ in $(seq 1 600); do
    "$bin/pg_isready" -q -h "$sock" -p "$port" -U postgres && break
    kill -0 "$vgpid" 2>/dev/null || { tail -n 30 "$work/server.log"; echo "server died" >&2; exit 1; }
    sleep 1
done
"$bin/pg_isready" -q -h "$sock" -p "$port" -U postgres || { echo "server did not start" >&2; exit 1; }

# The server must run our freshly built library from the private copy, under
# valgrind: check the server's own idea of PKGLIBDIR, and what the
# postmaster (a memcheck process) has mapped.
psql=("$bin/psql" -X -At -h "$sock" -p "$port" -U postgres -d postgres)
server_pkglib=$("${psql[@]}" -c "SELECT setting FROM pg_config WHERE name = 'PKGLIBDIR'")
postmaster=$(head -n 1 "$data/postmaster.pid")
mapped=$(grep -o '/[^ ]*flowella_apikey\.so' "/proc/$postmaster/maps" | sort -u)
exe=$(readlink "/proc/$postmaster/exe")
echo "server PKGLIBDIR: $server_pkglib"
echo "postmaster $postmaster runs $exe, maps $mapped"
if [ "$server_pkglib" != "$pkglibdir" ] || [ "$mapped" != "$pkglibdir/flowella_apikey.so" ] ||
        [[ "$exe" != *valgrind* && "$exe" != *memcheck* ]]; then
    echo "the server is not running the private copy under valgrind" >&2
    exit 1
fi

# ------------------------------------------------------------------ tests
# make installcheck in the build directory: pg_regress drops and creates the
# database contrib_regression and runs REGRESS (setup first), then the
# isolation specs (which create the extension themselves).
regress_opts="--host=$sock --port=$port --user=postgres"
installcheck() {
    make -s -C "$build" PG_CONFIG="$sys_pg_config" \
        EXTRA_REGRESS_OPTS="$regress_opts" installcheck "$@"
}
regress_status=0
installcheck ISOLATION= 2>&1 | tee "$work/regress.log" || regress_status=$?
[ "$regress_status" -eq 0 ] || regress_status=1
[ -s "$build/regression.diffs" ] && cat "$build/regression.diffs"
iso_status=skipped
if [ "${VALGRIND_ISOLATION:-1}" != 0 ]; then
    iso_status=0
    installcheck REGRESS= 2>&1 | tee "$work/isolation.log" || iso_status=1
    [ -s "$build/output_iso/regression.diffs" ] && cat "$build/output_iso/regression.diffs"
fi
# which processes ran, for the record (the usage launcher among them)
"${psql[@]}" -c "SELECT pid, backend_type FROM pg_stat_activity ORDER BY pid" \
    > "$work/processes.txt" 2>&1 || true

stop_server fast
trap - EXIT
grep -E 'terminated by signal|PANIC' "$work/server.log" || true

# ---------------------------------------------------------------- summary
# Each report lies between VALGRINDERROR-BEGIN and -END, followed by its
# generated suppression.  Ours: any frame (in the error stack, the
# allocation/free stack or the origin stack) in flowella_*.c/.h or in
# flowella_apikey.so.  Full reports go to flowella_errors.txt and
# other_errors.txt; the summary counts others by kind and first frame.
perl -e '
    my ($work) = @ARGV;
    my (@ours, @others, %kinds, %distinct, @order, $terminated);
    for my $f (sort glob("$work/valgrind/*.log")) {
        open(my $fh, "<", $f) or die;
        my ($in, $block, $after) = (0, "", 0);
        while (my $l = <$fh>) {
            $terminated++ if $l =~ /Process terminating with default action/;
            if ($l =~ /VALGRINDERROR-BEGIN/) { ($in, $block) = (1, "== $f\n"); next; }
            if ($l =~ /VALGRINDERROR-END/) { $in = 0; $after = 1; next; }
            if ($in) { $l =~ s/^==\d+== ?//; $block .= $l; next; }
            if ($after) {                    # the suppression that follows
                $block .= $l;
                next unless $l =~ /^}/;
                $after = 0;
                my ($kind) = $block =~ /^== .*\n(.*)\n/;
                $kind =~ s/\(0x[0-9a-f]+, 0x[0-9a-f]+, \d+\)//;   # overlap addresses
                my ($fn) = $block =~ /^\s+at 0x[0-9A-F]+: (\S+)/m;
                if ($block =~ /\bflowella_\w+\.[ch]:\d+|\/flowella_apikey\.so\)/) {
                    push @ours, $block;
                    # one entry per kind, first frame and first of our
                    # frames (the same error from other callers or in
                    # other processes counts under it)
                    my ($top) = $block =~ /^\s+at 0x[0-9A-F]+: (.*)$/m;
                    my ($mine) = $block =~ /^\s+(?:at|by) 0x[0-9A-F]+: (.*(?:flowella_\w+\.[ch]:\d+|\/flowella_apikey\.so)\))$/m;
                    my $key = join("\n", $kind, $top // "", $mine // "");
                    push @order, $key unless $distinct{$key}{n}++;
                    $distinct{$key}{text} //= $block;
                } else {
                    push @others, $block;
                    $kinds{"$kind  [at " . ($fn // "?") . "]"}++;
                }
            }
        }
    }
    open(my $o, ">", "$work/flowella_errors.txt"); print $o join("\n", @ours);
    open($o, ">", "$work/other_errors.txt"); print $o join("\n", @others);
    printf "valgrind: %d error report(s) involving flowella code (%d distinct), %d other(s)%s\n",
        scalar @ours, scalar @order, scalar @others,
        $terminated ? ", $terminated process(es) killed by a signal" : "";
    printf "  %5d  %s\n", $kinds{$_}, $_ for sort { $kinds{$b} <=> $kinds{$a} } keys %kinds;
    for my $k (@order) {
        print "---- error involving flowella code, in $distinct{$k}{n} report(s); first:\n",
            $distinct{$k}{text};
    }
    open($o, ">", "$work/flowella_error_count"); print $o scalar(@ours), "\n";
' "$work"
ours=$(cat "$work/flowella_error_count")

elapsed=$((SECONDS - start_time))
echo "pg_regress: $([ "$regress_status" -eq 0 ] && echo passed || echo FAILED)" \
     "($(grep -cE '^(ok|not ok) |\.\.\. ' "$work/regress.log" || true) tests);" \
     "isolation: $([ "$iso_status" = 0 ] && echo passed || { [ "$iso_status" = skipped ] && echo skipped || echo FAILED; })"
echo "time: $((elapsed / 60)) min $((elapsed % 60)) s; logs: $vglogs; reports: $work/flowella_errors.txt, $work/other_errors.txt"
[ "$regress_status" -eq 0 ] && [ "$iso_status" != 1 ] && [ "$ours" -eq 0 ]
