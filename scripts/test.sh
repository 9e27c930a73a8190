#!/usr/bin/env bash
# Sets up a virtual environment with the test extras (and nats-server, for the cluster tests)
# and runs the whole test suite; extra arguments go to pytest.
#
# The venv is created (and its pip upgraded) once. The install is editable, so a change to
# the code needs no reinstall; a change to pyproject.toml (dependencies, entry points) does:
# .venv/airwave-installed holds the hash of the pyproject.toml last installed, and the extras.
set -euo pipefail
cd "$(dirname "$0")/.."
# The cluster tests start a real nats-server with JetStream (Debian's package; CI's machine is fresh).
command -v nats-server >/dev/null || { apt-get update -qq && apt-get install -y -qq nats-server >/dev/null; }
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
    .venv/bin/python -m pip install --quiet --upgrade pip
fi
wanted="$(.venv/bin/python -c 'import hashlib; print(hashlib.sha256(open("pyproject.toml", "rb").read()).hexdigest())')"
if ! grep -qx "$wanted test" .venv/airwave-installed 2>/dev/null; then
    # setuptools' "Editable installation" note is noise here: see scripts/demo.sh.
    PYTHONWARNINGS="ignore:Editable installation" .venv/bin/python -m pip install --quiet -e '.[test]'
    echo "$wanted test" > .venv/airwave-installed
fi
exec .venv/bin/python -m pytest "$@"
