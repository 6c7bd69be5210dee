#!/usr/bin/env bash
# The main job of the README: executes the example notebooks headless in a
# real Jupyter kernel and prints what each magic reported.  Executed copies
# (with outputs) are written to demo-output/.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[test]"
exec "$VENV/bin/python" scripts/run_notebooks.py "$@"
