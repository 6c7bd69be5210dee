#!/usr/bin/env bash
# The test command of the README: sets up a virtual environment with the
# test extras, then runs ruff (blocking) and the test suite.
#   PYTHON=python3.12 VENV=.venv-3.12 bash scripts/test.sh -m "not browser"
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
EXTRAS=${EXTRAS:-test,browser}
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[$EXTRAS]"
"$VENV/bin/python" --version
"$VENV/bin/python" -m ruff check .
"$VENV/bin/python" -m ruff format --check .
exec "$VENV/bin/python" -m pytest "$@"
