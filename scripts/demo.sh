#!/usr/bin/env bash
# Install, build, and show flowella_apikey working in a throwaway cluster.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$here/scripts/deps.sh"
cd "$here"
pg_virtualenv -t "${venv_opts[@]}" -o log_min_messages=warning \
    -o flowella.usage_flush_interval=1 \
    psql -X -q -v ON_ERROR_STOP=1 -f demo/demo.sql
