#!/usr/bin/env bash
# The main job of the README: executes the example notebooks headless in a
# real Jupyter kernel and prints what each magic reported.  Executed copies
# (with outputs) are written to demo-output/.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating the virtual environment $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
echo "[setup] upgrading pip in $VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
echo "[setup] installing ipymem and the extras [test] (a minute or two on a fresh machine; pip says nothing meanwhile)"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[test]"
echo "[setup] done; executing the example notebooks"
exec "$VENV/bin/python" scripts/run_notebooks.py "$@"
