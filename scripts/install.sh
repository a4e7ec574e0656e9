#!/usr/bin/env bash
# Install memgate into ./.venv: the pinned CPU build of torch first (an open requirement could
# pull a multi-GB CUDA build), then the project. Pass "test" to add the test tools: the Python
# test extras, Debian's chromium (for the inspector page test; never a browser download) and
# the Node SDK test's pinned packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
if [ "${1:-}" = "test" ]; then
    .venv/bin/python -m pip install --quiet -e ".[test]"
    if ! command -v chromium >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ]; then
            apt-get update -qq
            apt-get install -y -qq chromium nodejs npm >/dev/null
        else
            echo "install Debian's chromium, nodejs and npm (apt-get install chromium nodejs npm)" >&2
            exit 1
        fi
    fi
    npm ci --prefix tests/node --no-audit --no-fund --silent
else
    .venv/bin/python -m pip install --quiet -e .
fi
