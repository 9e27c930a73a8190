#!/usr/bin/env bash
# Sets up a virtual environment (once) and runs the demo: a server, a host, two listeners,
# a co-host, a stop, and the event log replayed. Extra arguments go to `airwave demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e .
exec .venv/bin/airwave demo "$@"
