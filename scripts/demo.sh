#!/usr/bin/env bash
# Sets up a virtual environment and runs the demo: a server, a host, two listeners, a
# co-host, a stop, and the event log replayed. Extra arguments go to `airwave demo`.
#
# The venv is created (and its pip upgraded) once. The install is editable, so a change to
# the code needs no reinstall; a change to pyproject.toml (dependencies, entry points) does:
# .venv/airwave-installed holds the hash of the pyproject.toml last installed, and the extras.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
    .venv/bin/python -m pip install --quiet --upgrade pip
fi
wanted="$(.venv/bin/python -c 'import hashlib; print(hashlib.sha256(open("pyproject.toml", "rb").read()).hexdigest())')"
if ! grep -q "^$wanted" .venv/airwave-installed 2>/dev/null; then  # the demo needs no extras: any install will do
    # setuptools says "Editable installation ... folders with the same name as your package":
    # airwave.protocol, .actors and .media live in protocol/, actors/ and media/ (by design, so
    # no bare top-level package is installed), which an editable install can only map with an
    # import hook, and setuptools says so on every install. Nothing is wrong; the note is noise.
    PYTHONWARNINGS="ignore:Editable installation" .venv/bin/python -m pip install --quiet -e .
    echo "$wanted" > .venv/airwave-installed
fi
exec .venv/bin/airwave demo "$@"
