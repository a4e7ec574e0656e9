#!/usr/bin/env bash
# Install memgate into ./.venv: the pinned CPU build of torch first (an open requirement could
# pull a multi-GB CUDA build), then the project. Pass "test" to add the test tools: the Python
# test extras, Debian's chromium (for the inspector page test; never a browser download) and
# redis-server (the fleet rate-limit test starts its own on loopback), and the Node SDK
# test's pinned packages.
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
    # Only what is missing, each on its own: Debian's nodejs already bundles npm, and asking
    # apt for both at once is refused ("nodejs : Conflicts: npm").
    missing=()
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
    command -v node >/dev/null 2>&1 || missing+=(nodejs)
    command -v npm >/dev/null 2>&1 || missing+=(npm)
    command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)  # fleet rate limits
    if [ "${#missing[@]}" -gt 0 ]; then
        if [ "$(id -u)" != 0 ]; then
            echo "install Debian's ${missing[*]} (apt-get install ${missing[*]})" >&2
            exit 1
        fi
        apt-get update -qq
        for pkg in "${missing[@]}"; do
            if ! command -v "${pkg/nodejs/node}" >/dev/null 2>&1; then
                DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null
            fi
        done
    fi
    npm ci --prefix tests/node --no-audit --no-fund --silent
else
    .venv/bin/python -m pip install --quiet -e .
fi
