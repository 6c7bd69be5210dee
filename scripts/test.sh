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
  echo "[setup] creating the virtual environment $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
echo "[setup] upgrading pip in $VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
echo "[setup] installing ipymem and the extras [$EXTRAS] (a minute or two on a fresh machine; pip says nothing meanwhile)"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[$EXTRAS]"
echo "[setup] done; ruff, then pytest"
"$VENV/bin/python" --version
"$VENV/bin/python" -m ruff check .
"$VENV/bin/python" -m ruff format --check .
exec "$VENV/bin/python" -m pytest "$@"
