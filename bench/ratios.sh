# Sourced by the benchmark scripts: the throwaway cluster they run in, the
# ratios they report and the keys they verify.  A figure is the median over the rounds of each round's
# ratio (two runs measured in the same round share the machine's state),
# printed with every round's value: this machine is noisy.
# Run the calling script again inside a throwaway cluster, once: the
# packages and the build first (scripts/deps.sh), then pg_virtualenv with
# the library preloaded from PG_CONFIG's copy and the script's own server
# options.  Inside the cluster it returns at once.
bench_in_cluster() {   # script pg_virtualenv-options...
    [ -z "${BENCH_INSIDE:-}" ] || return 0
    local script=$1
    shift
    source "$here/scripts/deps.sh"
    export BENCH_INSIDE=1
    exec pg_virtualenv -t "${venv_opts[@]}" "$@" bash "$script"
}

# Time a flush of the usage counts and last uses pending now: a flush round
# every second until neither is pending, asked through the psql command
# given (with its connection options; its database has the extension);
# prints the seconds that took.  The last uses count too: a round writes
# them after the buckets, and a round still updating api_keys would run
# into the next measurement.  The interval is left at 1 s: the caller sets
# it back.
flush_timed() {   # psql-command...
    local start end
    start=$(date +%s.%N)
    "$@" -c "ALTER SYSTEM SET flowella.usage_flush_interval = 1" -c "SELECT pg_reload_conf()" >/dev/null
    for _ in $(seq 1 12000); do
        [ "$("$@" -At -c 'SELECT requests_pending = 0 AND pending = 0 FROM flowella.usage_stats()')" = t ] && break
        sleep 0.02
    done
    end=$(date +%s.%N)
    echo "$end - $start" | bc -l
}

ratio() { echo "scale=2; $1 / $2" | bc -l; }
median() { printf "%s\n" "$@" | sort -g | awk '{ v[NR] = $1 }
    END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ratio_median() {   # name-of-array-a name-of-array-b
    local -n xa=$1 xb=$2
    local rs=() i
    for i in "${!xa[@]}"; do rs+=("$(ratio "${xa[$i]}" "${xb[$i]}")"); done
    echo "$(median "${rs[@]}")   (rounds: ${rs[*]})"
}

# The SQL that makes the extension, plan "pro", 100 orgs and 10 000 keys
# (scope messages:send), their tokens in table t (i 1 .. 10 000), and leaves
# the transaction open for the caller's policies and COMMIT.
keys_sql() {
    local owner=11111111-1111-4111-8111-111111111111
    cat <<SQL
SET client_min_messages = warning;
CREATE EXTENSION flowella_apikey;
SELECT flowella.plan_set('pro', ARRAY['messages:send','messages:read'], true);
CREATE TABLE orgs AS
  SELECT i, flowella.org_create('org ' || i, 'pro', '$owner') AS org_id
    FROM generate_series(0, 99) i;
CREATE TABLE t (i int PRIMARY KEY, token text NOT NULL);
BEGIN;
SELECT flowella.set_actor('$owner') \gset
INSERT INTO t
  SELECT g.i, k.token
    FROM generate_series(1, 10000) g(i)
    JOIN orgs o ON o.i = g.i % 100,
         LATERAL flowella.apikey_create(o.org_id, 'key ' || g.i, ARRAY['messages:send']) k;
SQL
}
