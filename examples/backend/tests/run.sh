#!/usr/bin/env bash
# The reference backend's tests (examples/backend/): a throwaway cluster
# with the library preloaded and usage flushed every second, setup.sql,
# then the headless Chromium walk (test_browser.py; first, so that its
# screenshot shows its keys only) and the HTTP tests (test_http.py), each
# starting app.py as a process.  scripts/test.sh runs it.
# SCREENSHOT=<file.png> keeps the browser test's screenshot there.
set -euo pipefail
backend="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$backend/../../scripts/deps.sh"   # packages, build, install, venv_opts
cd "$backend"
pg_virtualenv -t "${venv_opts[@]}" -o flowella.usage_flush_interval=1 bash -c '
    psql -X -q -v password="$PGPASSWORD" -f setup.sql &&
    /usr/bin/python3 -m unittest -v tests.test_browser tests.test_http'
