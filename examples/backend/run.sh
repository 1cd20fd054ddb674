#!/usr/bin/env bash
# Start the reference backend against a throwaway cluster: install the
# packages, build and install the extension (scripts/deps.sh), make the
# cluster with the library preloaded, run setup.sql, then serve app.py on
# http://127.0.0.1:8471/ (PORT=... for another) until Ctrl-C, which also
# drops the cluster.  Usage is flushed every second here, so "Last used"
# shows at once (production: up to 60 s).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../../scripts/deps.sh"
# pg_virtualenv exports PGHOST, PGPORT and PGPASSWORD; the example's roles
# log in with that password (setup.sql).
pg_virtualenv -t "${venv_opts[@]}" -o flowella.usage_flush_interval=1 bash -c '
    psql -X -q -v password="$PGPASSWORD" -f "$1/setup.sql" &&
    /usr/bin/python3 "$1/app.py" --port "${PORT:-8471}"' run.sh "$here"
